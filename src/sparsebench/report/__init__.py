"""The report layer: statistics over seeds (`stats`), the report's rows from the methods'
evaluation files (`rows`), and the markdown, CSV and plots (`tables`). No torch, no MLflow.
"""
