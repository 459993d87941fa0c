// certbroker console: small enhancements on pages that work without them.
"use strict";

(function () {
  // -- the detail page: live progress of a pending order (server-sent events) --------------
  function text(el, value) { if (el) { el.textContent = value; } }

  function when(iso) {
    if (!iso) { return "—"; }
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return iso; }
    return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function setStatus(value) {
    var badge = document.getElementById("status");
    if (!badge) { return; }
    badge.textContent = value;
    badge.className = "status status-" + value;
  }

  function showProgress(data) {
    setStatus(data.status);
    var order = data.order;
    var state = document.getElementById("order-state");
    if (order && state) {
      state.textContent = order.state;
      state.className = "state state-" + order.state;
      text(document.getElementById("order-attempts"), String(order.attempts));
    }
    var list = document.getElementById("challenges");
    if (list) {
      list.replaceChildren();
      (data.challenges || []).forEach(function (c) {
        var li = document.createElement("li");
        li.textContent = c.name + ": " + c.type + " challenge answered since " + when(c.since);
        list.appendChild(li);
      });
      (data.dns_records || []).forEach(function (r) {
        var li = document.createElement("li");
        li.textContent = "TXT " + r.name + " = " + r.value + (r.written ? " (written)" : "");
        list.appendChild(li);
      });
    }
    showRecords(data.dns_records || []);
    var error = document.getElementById("order-error");
    if (error) {
      var message = order && order.error ? order.error : "";
      error.textContent = message;
      error.hidden = !message;
      // Waiting (for a person's DNS records, or queued until a budget or retry allows) is
      // no problem yet.
      var waiting = order && (order.state === "awaiting-dns" ||
                              (order.state === "queued" && order.next_run_at));
      error.className = waiting ? "note" : "problem";
    }
  }

  // Manual DNS-01: the records to write, as they arrive (and new ones after "new challenge").
  function showRecords(records) {
    var section = document.getElementById("dns-records");
    var body = document.getElementById("dns-records-body");
    if (!section || !body) { return; }
    body.replaceChildren();
    records.forEach(function (r) {
      var row = document.createElement("tr");
      [["Name", r.name, true], ["Type", "TXT", false], ["Value", r.value, true],
       ["For", r.identifier, false]].forEach(function (cell) {
        var td = document.createElement("td");
        td.setAttribute("data-label", cell[0]);
        if (cell[2]) {
          var code = document.createElement("code");
          if (cell[0] === "Value") { code.className = "value"; }
          code.textContent = cell[1];
          td.appendChild(code);
        } else {
          td.textContent = cell[1];
        }
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    section.hidden = !records.length;
  }

  function refreshFacts(url) {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (cert) {
        if (!cert) { return; }
        setStatus(cert.status);
        document.querySelectorAll("[data-fact]").forEach(function (el) {
          var key = el.getAttribute("data-fact");
          var value = cert[key];
          if (key === "days_left") {
            el.textContent = value === null || value === undefined ? "" : value + (value === 1 ? " day" : " days") + " left";
          } else if (key === "not_before" || key === "not_after" || key === "renew_at") {
            el.textContent = when(value);
          } else {
            el.textContent = value === null || value === undefined ? "—" : String(value);
          }
        });
        if (cert.serial) {
          document.querySelectorAll("[data-show-when-issued]").forEach(function (el) { el.hidden = false; });
          document.querySelectorAll("[data-hide-when-issued]").forEach(function (el) { el.hidden = true; });
        }
      })
      .catch(function () { /* the page still shows the last progress */ });
  }

  function follow(section) {
    if (section.getAttribute("data-active") !== "true" || !window.EventSource) { return; }
    var live = document.getElementById("live");
    if (live) { live.hidden = false; }
    var source = new EventSource(section.getAttribute("data-stream"));
    source.addEventListener("progress", function (event) {
      showProgress(JSON.parse(event.data));
    });
    source.addEventListener("done", function (event) {
      source.close();
      if (live) { live.hidden = true; }
      var data = JSON.parse(event.data);
      if (!data.deleted) { showProgress(data); }
      section.setAttribute("data-active", "false");
      section.setAttribute("data-done", "true");
      var renew = document.getElementById("renew");
      if (renew && data.status) { renew.textContent = data.status === "failed" ? "Try again now" : "Renew now"; }
      document.querySelectorAll("[data-show-when-done]").forEach(function (el) { el.hidden = false; });
      refreshFacts(section.getAttribute("data-details"));
    });
  }

  // -- DNS accounts: the chosen provider's fields, from the API ----------------------------
  function optionField(option) {
    var wrap = document.createElement("div");
    wrap.className = "field";
    var id = "opt-" + option.name;
    var label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = option.name;
    if (option.secret) {
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "secret";
      label.append(" ", tag);
    }
    wrap.appendChild(label);
    if (option.help) {
      var hint = document.createElement("p");
      hint.className = "hint";
      hint.id = id + "-hint";
      hint.textContent = option.help;
      wrap.appendChild(hint);
    }
    var input;
    var choices = option.choices || [];
    if (choices.length || option.flag) {
      input = document.createElement("select");
      var values = choices.length ? choices : ["true", "false"];
      [""].concat(values).forEach(function (v) {
        var o = document.createElement("option");
        o.value = v;
        o.textContent = v === "" ? "default" : v;
        input.appendChild(o);
      });
    } else {
      input = document.createElement("input");
      input.type = option.secret ? "password" : "text";
      input.autocomplete = "off";
      if (option["default"]) { input.placeholder = option["default"]; }
    }
    input.id = id;
    input.name = "opt." + option.name;
    if (option.help) { input.setAttribute("aria-describedby", id + "-hint"); }
    wrap.appendChild(input);
    return wrap;
  }

  function providerFields(select) {
    var box = document.getElementById("provider-options");
    var hidden = document.getElementById("provider");
    var button = select.form.querySelector("[data-no-js]");
    if (button) { button.hidden = true; }
    select.addEventListener("change", function () {
      var provider = select.value;
      hidden.value = provider;
      var legend = box.querySelector("legend");
      box.replaceChildren(legend);
      if (!provider) { return; }
      var loading = document.createElement("p");
      loading.className = "hint";
      loading.textContent = "Loading the options of " + provider + "…";
      box.appendChild(loading);
      fetch(box.getAttribute("data-options-url") + encodeURIComponent(provider), {
        credentials: "same-origin", headers: { Accept: "application/json" }
      })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (options) {
          loading.remove();
          options.forEach(function (o) { box.appendChild(optionField(o)); });
          if (!options.length) { loading.textContent = "No options."; box.appendChild(loading); }
        })
        .catch(function () { select.form.submit(); });  // the server shows the fields instead
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var progress = document.getElementById("progress");
    if (progress) { follow(progress); }
    var select = document.querySelector("[data-provider-select]");
    if (select) { providerFields(select); }
  });
})();
