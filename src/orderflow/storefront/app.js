// The store front: a store switcher, an order form over the store's catalogue,
// the placed order's live tracking and a live dashboard with alert pop-ups.
// `?api=http://host:port` points it at an API on another origin (CORS);
// `?store=Y` opens a store. Live updates come over server-sent events.
// `#keys=X:flk_…,Y:flk_…` (the link orderflow_server prints when it wants API
// keys) gives each store's key; the fragment never reaches a server, and the
// keys are kept for this tab only.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const api = (params.get("api") || "").replace(/\/$/, "");
  const STORES = ["X", "Y", "Z"];
  const $ = (id) => document.getElementById(id);
  let store = STORES.includes(params.get("store")) ? params.get("store") : "X";
  let catalogue = [];
  let currency = "USD";
  let streams = [];
  let tracked = null;
  let refreshTimer = null;

  const KEYS = JSON.parse(sessionStorage.getItem("flowline.keys") || "{}");
  const given = new URLSearchParams(location.hash.slice(1)).get("keys");
  if (given) {
    for (const pair of given.split(",")) {
      const [id, key] = pair.split(":");
      if (id && key) KEYS[id] = key;
    }
    sessionStorage.setItem("flowline.keys", JSON.stringify(KEYS));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const auth = () => (KEYS[store] ? { Authorization: "Bearer " + KEYS[store] } : {});

  const call = async (method, path, body, extra) => {
    const headers = Object.assign({ "X-Store-ID": store }, auth(), extra || {});
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(api + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await response.json().catch(() => null);
    return { status: response.status, body: json, headers: response.headers };
  };

  // A stream of server-sent events, `on` its handlers by event name (and
  // `open`, `error`). Without a key, an EventSource; with one, `fetch`, since
  // an EventSource sends no headers: it reads the events itself and
  // reconnects with Last-Event-ID as an EventSource would.
  const openStream = (path, on) => {
    if (!KEYS[store]) {
      const source = new EventSource(api + path + "?store=" + store);
      for (const [name, handler] of Object.entries(on)) source.addEventListener(name, handler);
      return source;
    }
    const controller = new AbortController();
    let lastId = null;
    let closed = false;
    const dispatch = (block) => {
      let name = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (id !== null) lastId = id;
      if (data.length && on[name]) on[name]({ data: data.join("\n") });
    };
    (async () => {
      while (!closed) {
        try {
          const headers = Object.assign({ "X-Store-ID": store, Accept: "text/event-stream" }, auth());
          if (lastId !== null) headers["Last-Event-ID"] = lastId;
          const response = await fetch(api + path, { headers, signal: controller.signal });
          if (!response.ok) throw new Error("status " + response.status);
          if (on.open) on.open();
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              dispatch(buffer.slice(0, end));
              buffer = buffer.slice(end + 2);
            }
          }
        } catch (_) {
          if (closed) return;
        }
        if (on.error) on.error();
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    })();
    return { close() { closed = true; controller.abort(); } };
  };

  const money = (m) => {
    if (!m || typeof m.minor !== "number") return "—";
    const digits = new Intl.NumberFormat("en", { style: "currency", currency: m.currency })
      .resolvedOptions().maximumFractionDigits;
    return new Intl.NumberFormat(undefined, { style: "currency", currency: m.currency })
      .format(m.minor / 10 ** digits);
  };
  const time = (ms) => new Date(ms).toLocaleTimeString();
  const text = (tag, value, cls) => {
    const el = document.createElement(tag);
    el.textContent = value;
    if (cls) el.className = cls;
    return el;
  };

  const live = (on, label) => {
    $("live").className = "live " + (on ? "on" : "off");
    $("live").textContent = label;
  };

  // --- the store switcher -------------------------------------------------
  const renderStores = () => {
    const nav = $("stores");
    nav.replaceChildren();
    for (const id of STORES) {
      const button = text("button", "Store " + id, id === store ? "on" : "");
      button.type = "button";
      button.dataset.store = id;
      button.addEventListener("click", () => switchTo(id));
      nav.append(button);
    }
  };

  const switchTo = (id) => {
    store = id;
    catalogue = [];
    params.set("store", id);
    history.replaceState(null, "", "?" + params.toString());
    for (const stream of streams) stream.close();
    streams = [];
    tracked = null;
    $("tracking-id").textContent = "";
    $("timeline").replaceChildren();
    badge("No order yet", "idle");
    $("order-message").textContent = "";
    renderStores();
    loadCatalogue();
    loadStats();
    listenToAlerts();
  };

  // --- the order form -----------------------------------------------------
  const loadCatalogue = async () => {
    const answer = await call("GET", "/api/catalogue");
    if (answer.status !== 200) {
      const why = answer.status === 401 || answer.status === 403
        ? "This server wants an API key for store " + store + ": open the store-front link it printed."
        : "The catalogue is unavailable (" + answer.status + ").";
      $("products").replaceChildren(text("td", why, "muted"));
      return;
    }
    currency = answer.body.currency;
    $("store-name").textContent = answer.body.name;
    document.title = answer.body.name + " · flowline";
    const products = answer.body.products;
    const same = products.length === catalogue.length
      && products.every((p, i) => p.id === catalogue[i].id)
      && document.querySelectorAll("#products input").length === products.length;
    catalogue = products;
    if (same) {
      // Only the stock moved: update it in place, so that a quantity being
      // typed keeps its focus.
      for (const p of products) {
        const input = document.querySelector("#products input[data-product=\"" + CSS.escape(p.id) + "\"]");
        const cell = input && input.closest("tr").children[2];
        if (cell) stockCell(cell, p);
      }
      total();
      return;
    }
    const chosen = quantities();
    const rows = catalogue.map((p) => {
      const row = document.createElement("tr");
      row.append(text("td", p.name));
      row.append(text("td", money(p.price), "num"));
      const stock = document.createElement("td");
      stockCell(stock, p);
      row.append(stock);
      const cell = document.createElement("td");
      cell.className = "num";
      const qty = document.createElement("input");
      qty.type = "number"; qty.min = "0"; qty.max = "1000"; qty.value = chosen[p.id] || "0";
      qty.dataset.product = p.id;
      qty.setAttribute("aria-label", "Quantity of " + p.name);
      qty.addEventListener("input", total);
      cell.append(qty);
      row.append(cell);
      return row;
    });
    $("products").replaceChildren(...rows);
    total();
  };

  const stockCell = (cell, p) => {
    cell.textContent = String(p.available);
    cell.className = "num" + (p.available === 0 ? " out" : p.available <= p.threshold ? " low" : "");
  };

  const quantities = () => {
    const out = {};
    for (const input of document.querySelectorAll("#products input")) {
      const n = parseInt(input.value, 10);
      if (n > 0) out[input.dataset.product] = n;
    }
    return out;
  };

  const total = () => {
    const chosen = quantities();
    let minor = 0, units = 0;
    for (const p of catalogue) {
      if (chosen[p.id]) { minor += p.price.minor * chosen[p.id]; units += chosen[p.id]; }
    }
    $("order-total").textContent = units ? units + " item(s), " + money({ minor, currency }) : "Nothing chosen";
    $("place").disabled = units === 0;
  };

  $("order-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = quantities();
    const items = Object.entries(chosen).map(([productId, quantity]) => ({ productId, quantity }));
    const orderId = "web-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 6);
    const message = $("order-message");
    $("place").disabled = true;
    try {
      const answer = await call("POST", "/api/order",
        { orderId, customerName: $("customer").value, items }, { "Idempotency-Key": orderId });
      if (answer.status === 201) {
        message.className = "message ok";
        message.textContent = "Order " + orderId + " placed: " + money(answer.body.total) + ".";
        for (const input of document.querySelectorAll("#products input")) input.value = "0";
        track(orderId);
      } else {
        const wait = answer.headers.get("Retry-After");
        message.className = "message error";
        message.textContent = (answer.body && answer.body.message ? answer.body.message : "Refused (" + answer.status + ")")
          + (wait ? " Try again in " + wait + " s." : "");
      }
    } catch (err) {
      message.className = "message error";
      message.textContent = "The store cannot be reached: " + err.message;
    }
    total();
  });

  // --- tracking -----------------------------------------------------------
  const STATUS_CLASS = {
    delivered: "good", fulfilled: "moving", shipped: "moving", paid: "moving", reserved: "moving",
    pending: "moving", flagged: "wait", failed: "bad", rejected: "bad", cancelled: "bad", returned: "bad",
  };
  const badge = (label, cls) => {
    $("tracking-status").textContent = label;
    $("tracking-status").className = "status-badge " + cls;
  };

  const track = (orderId) => {
    if (tracked) tracked.close();
    $("tracking-id").textContent = orderId;
    $("timeline").replaceChildren();
    badge("placed", "moving");
    const source = openStream("/api/order/" + encodeURIComponent(orderId) + "/events", { order: (event) => {
      const update = JSON.parse(event.data);
      badge(update.status, STATUS_CLASS[update.status] || "moving");
      for (const m of update.history) {
        const item = document.createElement("li");
        const what = text("span", m.status.replaceAll("_", " ").toLowerCase());
        if (m.note) what.append(text("span", m.note, "note"));
        item.append(what, text("span", time(m.timestamp), "when"));
        $("timeline").append(item);
      }
      $("timeline").scrollTop = $("timeline").scrollHeight;
      refreshSoon();
    } });
    tracked = source;
    streams.push(source);
  };

  // --- the dashboard ------------------------------------------------------
  const loadStats = async () => {
    const answer = await call("GET", "/api/dashboard/stats");
    if (answer.status !== 200) return;
    const s = answer.body;
    $("total-orders").textContent = s.totalOrders.toLocaleString();
    $("revenue").textContent = money(s.revenue);
    $("fulfilment").textContent = s.fulfillmentRate.toFixed(1) + " %";
    $("active-alerts").textContent = s.activeAlerts.toLocaleString();
    $("health").textContent = s.status;
    $("health").className = "pill" + (s.status === "Throttled" ? " throttled" : "");
    const counts = Object.entries(s.ordersByStatus).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    const most = Math.max(1, ...counts.map(([, n]) => n));
    $("by-status").replaceChildren(...counts.map(([status, n]) => {
      const bar = document.createElement("div");
      bar.className = "bar";
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = (100 * n / most) + "%";
      track.append(fill);
      bar.append(text("span", status), track, text("span", n.toLocaleString(), "num"));
      return bar;
    }));
    $("recent").replaceChildren(...s.recentOrders.map((o) => {
      const row = document.createElement("tr");
      row.append(text("td", o.orderId), text("td", o.customer), text("td", money(o.amount), "num"),
        text("td", o.rawStatus), text("td", o.time, "muted"));
      return row;
    }));
  };

  // Many events in a row cost one refresh.
  const refreshSoon = () => {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => { loadStats(); loadCatalogue(); }, 300);
  };

  const toast = (alert) => {
    const el = document.createElement("div");
    el.className = "toast " + alert.type;
    el.append(text("strong", alert.title), text("span", alert.message));
    $("toasts").prepend(el);
    while ($("toasts").children.length > 4) $("toasts").lastChild.remove();
    setTimeout(() => el.remove(), alert.type === "info" ? 4000 : 9000);
  };

  const listenToAlerts = () => {
    const source = openStream("/api/alerts/stream", {
      open: () => live(true, "live"),
      error: () => live(false, KEYS[store] ? "reconnecting" : "reconnecting (an API key may be needed)"),
      snapshot: () => refreshSoon(),
      alert: (event) => {
        const alert = JSON.parse(event.data);
        if (alert.state === "open") toast(alert);
        refreshSoon();
      },
    });
    streams.push(source);
  };

  switchTo(store);
})();
