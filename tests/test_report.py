import csv
import io

from sparsebench.report import (
    markdown_table,
    residual_table,
    summary_rows,
    to_csv,
    write_report,
)


def _result(method, acc, sparsity, seeds=(0.1, -0.1)):
    per_seed = {str(i): {"test_accuracy": acc + d / 100, "sparsity": sparsity,
                         "test_loss": 0.1, "density": 1 - sparsity,
                         "compression_ratio": 1 / (1 - sparsity),
                         "compression_ratio_all": 0.9 / (1 - sparsity),
                         "theoretical_speedup": 1 / (1 - sparsity), "flops_nonzero": 10.0}
                for i, d in enumerate(seeds)}
    keys = per_seed["0"]
    mean = {k: sum(s[k] for s in per_seed.values()) / len(per_seed) for k in keys}
    std = {k: 0.0 for k in keys} | {"test_accuracy": 0.0014}
    return {"method": method, "epochs": {"pretrain": 12, "prune": 10, "retrain": 5, "total": 27},
            "mean": mean, "std": std, "seeds": per_seed,
            "layers": {"0": {"fc1": {"sparsity": sparsity}, "fc2": {"sparsity": sparsity / 2}}}}


RESULTS = {"dense": _result("dense", 0.984, 0.0), "gmp_90": _result("gmp", 0.98, 0.9)}


def test_table_shows_budget_mean_and_spread():
    table = markdown_table(RESULTS, "default")
    assert "| gmp_90 (gmp) | default | 27 (12+10+5) | 98.00 ± 0.14 | 90.00 ± 0.00 | " \
           "10.00 ± 0.00 | 10.0x ± 0.0 | 9.0x ± 0.0 | 10.0x ± 0.0 |" in table
    assert "| dense | default | 27 (12+10+5) | 98.40 ± 0.14 |" in table
    assert "over 2 seeds" in table
    assert "Tuned parameters" not in table


def test_tuned_method_is_marked_and_set_beside_its_hand_set_figures():
    tuned = {**_result("admm", 0.981, 0.95),
             "params": {"source": "tuned", "study": "default-admm-accuracy_at_sparsity",
                        "trials": 20, "values": {"rho": 0.00231, "rho_growth": 1.7},
                        "val_accuracy": 0.9842, "val_sparsity": 0.95,
                        "handset_val_accuracy": 0.9811, "handset_val_sparsity": 0.95}}
    results = {"dense": RESULTS["dense"], "admm": tuned}
    table = markdown_table(results, "default")
    assert "| admm | tuned | 27 (12+10+5) | 98.10 ± 0.14 |" in table
    assert "| dense | default |" in table
    assert ("| admm | default-admm-accuracy_at_sparsity (20) | rho 0.00231, rho_growth 1.7 | "
            "98.42 at 95.0% sparse | 98.11 at 95.0% sparse | 98.10 ± 0.14 |") in table
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(to_csv(summary_rows(results))))}
    assert rows["admm"]["params"] == "tuned" and rows["dense"]["params"] == "default"


def test_csv_has_one_row_per_method_with_means_and_stds():
    rows = list(csv.DictReader(io.StringIO(to_csv(summary_rows(RESULTS)))))
    assert [r["key"] for r in rows] == ["dense", "gmp_90"]
    assert float(rows[1]["test_accuracy"]) == 0.98
    assert float(rows[1]["test_accuracy_std"]) == 0.0014
    assert rows[1]["epochs_total"] == "27"


def test_residual_table_keeps_only_admm_iterations():
    prune = {"admm": [{"epoch": 1, "val_accuracy": 0.9, "primal_residual": 0.5, "rho": 0.1,
                       "dual_residual": 0.01, "z_sparsity": 0.9, "train_loss": 1.0}],
             "gmp": [{"epoch": 1, "val_accuracy": 0.95, "sparsity": 0.5}]}
    assert residual_table(prune) == [{"method": "admm", "iteration": 1, "val_accuracy": 0.9,
                                      "primal_residual": 0.5, "dual_residual": 0.01,
                                      "rho": 0.1, "z_sparsity": 0.9}]


def test_write_report_writes_every_declared_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    curves = {"gmp_90": [{"val_accuracy": 0.9, "sparsity": 0.5, "train_loss": 0.3}],
              "dense": []}
    files = write_report(RESULTS, curves, "default")
    assert {p.name for p in files} == {
        "summary.md", "summary.csv", "accuracy_vs_sparsity.csv", "curves.json",
        "accuracy_vs_sparsity.png", "val_accuracy.png", "sparsity.png", "layer_sparsity.png",
        "admm_residuals.json", "admm_residuals.png"}
    assert all((tmp_path / p).stat().st_size > 0 for p in files)
