// event-router console: the live tables (GET /tap, server-sent events) and "select all". The pages work
// without it. Every value goes in as text (textContent), never as markup.
"use strict";
(function () {
  const KEEP = 50;

  function cell(row, text, href) {
    const td = row.insertCell();
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
    return td;
  }

  function follow(table) {
    const status = document.querySelector("[data-tap-status]");
    const wanted = table.dataset.eventId;
    const body = table.tBodies[0];
    if (!window.EventSource) {
      if (status) status.textContent = "not supported by this browser";
      return;
    }
    const source = new EventSource(table.dataset.tap);
    source.onopen = function () { if (status) status.textContent = "live"; };
    source.onerror = function () { if (status) status.textContent = "reconnecting…"; };
    source.onmessage = function (message) {
      const record = JSON.parse(message.data);
      if (wanted && record.event_id !== wanted) return;
      const placeholder = body.querySelector("tr.placeholder");
      if (placeholder) placeholder.remove();
      const row = body.insertRow(0);
      row.className = "fresh";
      cell(row, record.time ? new Date(record.time * 1000).toISOString().slice(11, 19) + "Z" : "");
      if (record.type === "dropped") {
        cell(row, "dropped");
        const td = cell(row, record.count + " record(s) not shown: " + record.why);
        td.colSpan = 5;
        return;
      }
      cell(row, record.type === "event" ? "event" : "delivery " + (record.attempt ? "attempt " + record.attempt : ""));
      cell(row, record.trigger || "-");
      cell(row, record.event_id || "-", record.event_id ? "/console/events/" + encodeURIComponent(record.event_id) : null);
      const outcome = cell(row, (record.outcome || "").replace(/_/g, " "));
      outcome.className = record.outcome === "delivered" || record.outcome === "accepted" ? "ok"
        : record.outcome === "retry" ? "warn-text" : (record.outcome ? "error" : "");
      cell(row, record.type === "event" ? (record.input || "") + " → " + (record.routes || []).join(", ")
        : record.output + " (" + record.route + ")");
      const detail = record.error || (record.errors || []).join("; ") ||
        (record.retry_in !== undefined ? "retry in " + record.retry_in + "s" : "") ||
        (record.dead_letter ? "dead letter " + record.dead_letter : "");
      cell(row, detail, record.dead_letter ? "/console/dead-letters/" + record.dead_letter : null);
      while (body.rows.length > KEEP) body.deleteRow(-1);
    };
  }

  document.querySelectorAll("table[data-tap]").forEach(follow);
  document.querySelectorAll("[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      box.closest("form").querySelectorAll('input[name="id"]').forEach(function (one) { one.checked = box.checked; });
    });
  });
})();
