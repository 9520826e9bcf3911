"""Starts orderflow_server and a real Prometheus scraping its /metrics, places
a known number of orders, then asks Prometheus (PromQL over its HTTP API) for
the series an operator's dashboards and alerts read, and checks their values
against what the orders imply. Exits non-zero on the first mismatch.

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
    print("Prometheus found every series, with the values the orders imply")


if __name__ == "__main__":
    main()
