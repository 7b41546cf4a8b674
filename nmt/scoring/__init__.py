"""Scoring and looking into translations: sacreBLEU metrics with signatures (metrics.py),
confidence intervals, significance and breakdowns (report.py), search error or model error
(analysis.py), per-sentence diagnostics (diagnostics.py) and the HTML page (html.py)."""
