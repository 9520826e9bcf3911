"""Starts orderflow_server and a real Prometheus scraping its /metrics, places
a known number of orders, then asks Prometheus (PromQL over its HTTP API) for
the series an operator's dashboards and alerts read, and checks their values
against what the orders imply. Exits non-zero on the first mismatch.

Then, while Prometheus still runs, it checks what docs/OPERATING.md gives
operators: `promtool check rules` on docs/prometheus/alerts.yml, every rule's
`expr` run through Prometheus without an error, and every ```promql block of
the guide and every panel query of docs/grafana/flowline.json (Grafana's
variables filled in) run the same way, each with at least one series: this
run has every series they read (a webhook endpoint, a throttled store,
per-store counts, the cron step).

Usage: python3 .ci/prometheus_check.py PATH_TO_orderflow_server
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

SERVER = "127.0.0.1:3120"
PROMETHEUS = "127.0.0.1:9391"
FAILURES = []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "docs", "prometheus", "alerts.yml")
DASHBOARD = os.path.join(ROOT, "docs", "grafana", "flowline.json")
GUIDE = os.path.join(ROOT, "docs", "OPERATING.md")
# What Grafana puts in place of its variables when it sends a panel's query:
# every step (the `step` variable's "All"), and windows for a 1 s scrape.
GRAFANA_VARIABLES = {
    "step": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(what, check, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.25)
    sys.exit(f"timed out waiting for {what}")


def query(promql):
    """The vector PromQL returns now: [(labels, value)]."""
    url = f"http://{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http("GET", url)
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        sys.exit(f"query {promql!r} failed: {status} {body}")
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def try_query(promql):
    """(the vector PromQL returns now, None), or (None, why it failed)."""
    url = f"http://{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http("GET", url)
    try:
        answer = json.loads(body)
    except ValueError:
        return None, f"{status} {body[:300]}"
    if status != 200 or answer.get("status") != "success":
        return None, f"{status} {answer.get('errorType')}: {answer.get('error')}"
    return answer["data"]["result"], None


def scalar(promql):
    result = query(promql)
    if len(result) != 1:
        FAILURES.append(f"{promql}: expected one series, got {result}")
        return float("nan")
    return result[0][1]


def expect(name, value, ok):
    verdict = "ok" if ok else "WRONG"
    print(f"  {verdict:5} {name}: {value}")
    if not ok:
        FAILURES.append(f"{name}: {value}")


def rule_exprs(path):
    """[(alert or record name, expr)] of a rule file whose every `expr` is on
    one line (the file says so at its top): no YAML parser in the standard
    library."""
    rules, names = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            name = re.match(r"^\s*-\s*(?:alert|record):\s*(\S+)\s*$", line)
            if name:
                names.append(name.group(1))
                continue
            expr = re.match(r"^\s*(?:-\s*)?expr:\s*(.*?)\s*$", line)
            if not expr:
                continue
            value = expr.group(1)
            if value[:1] in ("|", ">", ""):
                FAILURES.append(f"{path}:{number}: keep each expr on one line")
                continue
            if value[0] == '"':
                value = json.loads(value)
            elif value[0] == "'":
                value = value[1:-1].replace("''", "'")
            rules.append((names[-1] if names else f"line {number}", value))
    if len(rules) != len(names):
        FAILURES.append(f"{path}: {len(names)} rules but {len(rules)} one-line exprs")
    return rules


def dashboard_targets(path):
    """[(panel title, expr)] of every panel (rows' panels too) and the
    template variables' queries."""
    with open(path) as f:
        dashboard = json.load(f)
    targets = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    targets.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    variables = [(v["name"], v.get("definition") or v.get("query"))
                 for v in dashboard.get("templating", {}).get("list", [])
                 if v.get("type") == "query"]
    return targets, variables


def guide_queries(path):
    """The query of each ```promql block of the guide (one a block; its lines
    joined)."""
    with open(path) as f:
        blocks = re.findall(r"^```promql\n(.*?)^```", f.read(), re.S | re.M)
    return [" ".join(line.strip() for line in block.splitlines() if line.strip())
            for block in blocks]


def must_find_series(label, promql):
    """Runs `promql`; a failure unless it answers at least one series."""
    result, error = try_query(promql)
    if error:
        print(f"  WRONG {label}{promql}\n        {error}")
        FAILURES.append(f"{label}{promql}: {error}")
        return
    ok = len(result) > 0
    print(f"  {'ok' if ok else 'WRONG':5} {len(result)} series {label}{promql}")
    if not ok:
        FAILURES.append(f"{label}{promql}: no series")


def grafana_fill(expr):
    """The query Grafana would send: its variables replaced."""
    unknown = []

    def fill(match):
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            unknown.append(name)
            return match.group(0)
        return GRAFANA_VARIABLES[name]

    filled = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", fill, expr)
    return filled, unknown


def check_operator_files():
    """The rule file, the guide's queries and the dashboard's, against the
    Prometheus of this run."""
    print(f"promtool check rules {os.path.relpath(RULES, ROOT)}:")
    try:
        checked = subprocess.run(["promtool", "check", "rules", RULES],
                                 capture_output=True, text=True, timeout=60)
        output = (checked.stdout + checked.stderr).strip()
        print("\n".join("  " + line for line in output.splitlines()))
        if checked.returncode != 0:
            FAILURES.append(f"promtool check rules: exit {checked.returncode}")
    except FileNotFoundError:
        FAILURES.append("promtool not found (Debian's prometheus package has it)")

    print(f"the rules of {os.path.relpath(RULES, ROOT)} through Prometheus (series firing now):")
    rules = rule_exprs(RULES)
    if not rules:
        FAILURES.append(f"{RULES}: no rules found")
    for name, expr in rules:
        result, error = try_query(expr)
        if error:
            print(f"  WRONG {name}: {expr}\n        {error}")
            FAILURES.append(f"rule {name}: {error}")
        else:
            print(f"  ok    {name}: {len(result)} series: {expr}")

    print(f"the queries of {os.path.relpath(GUIDE, ROOT)} through Prometheus (each must find series):")
    queries = guide_queries(GUIDE)
    if not queries:
        FAILURES.append(f"{GUIDE}: no ```promql blocks found")
    for promql in queries:
        must_find_series("", promql)

    print(f"the panels of {os.path.relpath(DASHBOARD, ROOT)} through Prometheus (each must find series):")
    targets, variables = dashboard_targets(DASHBOARD)
    if not targets:
        FAILURES.append(f"{DASHBOARD}: no panel queries found")
    for name, definition in variables:
        values = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", definition or "")
        if not values:
            print(f"  WRONG variable {name}: {definition!r} is not label_values(series, label)")
            FAILURES.append(f"variable {name}: {definition!r}")
            continue
        series, label = values.groups()
        url = (f"http://{PROMETHEUS}/api/v1/label/{label}/values?"
               + urllib.parse.urlencode({"match[]": series}))
        status, body = http("GET", url)
        found = (json.loads(body).get("data") or []) if status == 200 else []
        ok = len(found) > 0
        print(f"  {'ok' if ok else 'WRONG':5} variable {name}: {len(found)} values: {definition}")
        if not ok:
            FAILURES.append(f"variable {name}: {status} {body[:300]}")
    for title, expr in targets:
        filled, unknown = grafana_fill(expr)
        if unknown:
            print(f"  WRONG [{title}] unknown variables {unknown}: {expr}")
            FAILURES.append(f"panel {title!r}: unknown variables {unknown}")
            continue
        must_find_series(f"[{title}] ", filled)


def order(store, key, n):
    body = {
        "orderId": f"prom-{store}-{n}",
        # A customer each: the fraud rules hold back rapid orders of one.
        "customerName": f"Customer {store}{n}",
        "items": [{"productId": f"prod-{store.lower()}-001", "quantity": 1}],
    }
    headers = {"X-Store-ID": store, "Authorization": f"Bearer {key}"}
    status, _ = http("POST", f"http://{SERVER}/api/order", body, headers)
    return status


def main():
    server_binary = sys.argv[1]
    scratch = tempfile.mkdtemp()
    log = open(os.path.join(scratch, "server.log"), "w+")
    server = subprocess.Popen(
        [server_binary, "--listen", SERVER, "--path", os.path.join(scratch, "orders.db"),
         "--intake-rate", "2", "--failure-rate", "0", "--webhooks-to-loopback"],
        stdout=log, stderr=subprocess.STDOUT)
    prometheus = None
    try:
        def keys_printed():
            log.seek(0)
            return "metrics (Prometheus)" in log.read()
        wait_for("the server", keys_printed)
        log.seek(0)
        text = log.read()
        operator = re.search(r"operator \(workbench, /admin/keys\): (flk_[A-Za-z0-9_-]+)", text).group(1)
        store_keys = {s: re.search(rf"store {s}: (flk_[A-Za-z0-9_-]+)", text).group(1) for s in "XY"}

        # Store Y's webhooks go to a port nothing listens on: every attempt
        # is unreachable, and counted.
        status, body = http("POST", f"http://{SERVER}/admin/stores/Y/webhooks",
                            {"url": "http://127.0.0.1:9/hooks", "topics": ["order.created"]},
                            {"Authorization": f"Bearer {operator}"})
        assert status == 201, (status, body)

        # Store X places 12 orders at once: its intake (2 a second, burst 4)
        # takes a few and answers 429 to the rest. Store Y places 5 slowly.
        x = [order("X", store_keys["X"], n) for n in range(12)]
        y = []
        for n in range(5):
            y.append(order("Y", store_keys["Y"], n))
            time.sleep(0.7)
        accepted_x, throttled_x = x.count(201), x.count(429)
        accepted_y = y.count(201)
        print(f"store X: {accepted_x} accepted, {throttled_x} throttled; store Y: {accepted_y} accepted")
        assert accepted_x + throttled_x == 12 and accepted_y == 5, (x, y)
        accepted = accepted_x + accepted_y

        config = os.path.join(scratch, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: orderflow
    authorization:
      credentials: {operator}
    static_configs:
      - targets: ["{SERVER}"]
""")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={scratch}/tsdb",
             f"--web.listen-address={PROMETHEUS}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(scratch, "prometheus.log"), "w"))
        wait_for("Prometheus' first scrape", lambda: query('up{job="orderflow"} == 1'))
        # The orders settle (payments, fulfilment) while Prometheus scrapes.
        wait_for("every payment", lambda: scalar(
            'sum(flowline_step_processed_total{step="payment_processing"})') >= accepted, 90)
        time.sleep(3)

        print("PromQL against the scraped series:")
        v = scalar('sum(flowline_step_processed_total{step="order_create_api"})')
        expect("orders answered by the create API", v, v == accepted)
        # Fraud screening also counts each declined payment.
        v = scalar('sum(flowline_step_processed_total{step="fraud_guard"})')
        expect("fraud screenings (orders, then declines)", v, accepted <= v <= 2 * accepted)
        v = scalar('sum(flowline_step_processed_total{step="payment_processing"})')
        expect("payments committed", v, v == accepted)
        v = scalar('sum(flowline_step_end_to_end_duration_seconds_count{step="payment_processing"})')
        expect("end-to-end latencies recorded for payments", v, v == accepted)
        v = scalar('histogram_quantile(0.99, sum by (le) (flowline_step_handler_duration_seconds_bucket{step="fraud_guard"}))')
        expect("p99 fraud screening handler time (s)", v, 0 < v < 5)
        v = scalar('sum(flowline_step_dead_lettered_total)')
        expect("dead letters", v, v == 0)
        v = scalar('sum(flowline_flow_control_throttled_total{step="order_create_api",limit="intake",key="X"})')
        expect("store X's intake hold-backs", v, v == throttled_x)
        v = scalar('sum(flowline_step_throttled_total{step="order_create_api"})')
        expect("intake hold-backs of the create API", v, v == throttled_x)
        v = scalar('sum(flowline_tenant_processed_total{tenant="Y"})')
        expect("store Y's executions", v, v >= accepted_y * 5)
        v = len(query("flowline_queue_deliveries"))
        expect("queue depth states", v, v == 5)
        v = len(query('flowline_step_queue_deliveries{state="ready"}'))
        expect("steps with a queue series", v, v == len(query("flowline_step_processed_total")))
        v = scalar('sum(flowline_queue_deliveries{state="dead"})')
        expect("dead letters in the queue", v, v == 0)
        wait_for("the webhook attempts", lambda: scalar(
            'sum(flowline_webhook_deliveries_total{outcome="unreachable"})') >= accepted_y, 60)
        v = scalar('sum(flowline_webhook_deliveries_total{outcome="unreachable"})')
        expect("unreachable webhook attempts (store Y's endpoint)", v, v >= accepted_y)
        v = len(query('flowline_cron_lag_seconds_count'))
        expect("cron steps with a lag histogram", v, v >= 1)
        v = scalar('sum(rate(flowline_step_processed_total[1m])) > 0')
        expect("executions a second over the last minute", v, v > 0)

        check_operator_files()
    finally:
        for process in (server, prometheus):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    if FAILURES:
        log.seek(0)
        print(log.read()[-3000:], file=sys.stderr)
        sys.exit("wrong: " + "; ".join(FAILURES))
    shutil.rmtree(scratch, ignore_errors=True)
    print("Prometheus found every series, with the values the orders imply;"
          " the alert rules, the guide's queries and the dashboard's run on them")


if __name__ == "__main__":
    main()
