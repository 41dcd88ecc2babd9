"""Run one PromQL instant query against a Prometheus HTTP API; print one line per series.

usage: python infra/promql.py PROMETHEUS_URL QUERY

PROMETHEUS_URL is the API's base, e.g. http://localhost:9090 for Google Managed
Prometheus's frontend port-forwarded there. Each line is the series' labels and its
value; exit 1 if Prometheus cannot be reached or rejects the query.
"""
import json
import sys
import urllib.error
import urllib.parse
import urllib.request


def query(base_url, promql, timeout=30):
    """The result list of an instant query ([{"metric": {...}, "value": [t, "v"]}, ...])."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise RuntimeError(f"Prometheus at {base_url} answered {e.code} to {promql!r}: {detail}") from None
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot query Prometheus at {base_url} (is PROMETHEUS_URL right?): {e}") from None
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus at {base_url} rejected {promql!r}: {body.get('error', body)}")
    return body["data"]["result"]


def lines(result):
    """``label=value ...  number`` for each series, sorted by labels; "(no data)" when there is none."""
    out = []
    for series in result:
        labels = " ".join(f"{k}={v}" for k, v in sorted(series["metric"].items())) or "(all)"
        value = float(series["value"][1])
        out.append(f"  {labels}  {value:.4g}")
    return sorted(out) or ["  (no data)"]


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: python infra/promql.py PROMETHEUS_URL QUERY")
    try:
        print("\n".join(lines(query(*argv))))
    except RuntimeError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
