/* Cloudhop spawn form: provider -> region -> GPU -> count as dependent choices.
   Reads the offers (already filtered by the user's policy) and the last options from
   the JSON elements of form.html; builds every list with DOM calls (textContent), so
   no value is ever parsed as HTML. The hub validates everything again on submit. */
(function () {
  "use strict";
  var offers = JSON.parse(document.getElementById("ch-offers-data").textContent || "[]");
  var last = JSON.parse(document.getElementById("ch-last-data").textContent || "{}");
  // "provider/region" -> why that place offers no GPU (spawner/form_reasons.py)
  var noGpu = JSON.parse((document.getElementById("ch-no-gpu-data") || {}).textContent || "{}");
  var $ = function (id) { return document.getElementById(id); };
  var el = {
    provider: $("ch-provider"), region: $("ch-region"), gpu: $("ch-gpu"), count: $("ch-count"),
    spot: $("ch-spot"), rows: $("ch-offer-rows"), more: $("ch-more"), zone: $("ch-zone"),
    auto: $("ch-auto-pick"), rayGpu: $("ch-ray-gpu"),
    gpuWhy: $("ch-gpu-why"), zoneWhy: $("ch-zone-why"), rayWhy: $("ch-ray-why")
  };
  var MAX_ROWS = 25;
  var lastRay = last.ray || {};
  var pending = {  // last options, applied once each as the lists are first built
    region: last.region || "", gpu: last.gpu || "", count: last.gpu_count != null ? String(last.gpu_count) : "",
    instance: last.instance_type || "", zone: last.zone || ""
  };

  function fold(s) { return String(s).toLowerCase(); }
  function price(o, spot) {
    if (spot) { return o.spot_price_hour != null ? o.spot_price_hour : (o.price_hour === 0 ? 0 : null); }
    return o.price_hour;
  }
  function money(v, partial) { return v == null ? "\u2013" : "$" + v.toFixed(2) + (partial ? " + host" : ""); }
  function num(v, unit) { return v == null ? "\u2013" : String(Math.round(v * 10) / 10) + (unit || ""); }
  function byPrice(spot) {
    return function (a, b) {
      var pa = price(a, spot), pb = price(b, spot);
      pa = pa == null ? Infinity : pa; pb = pb == null ? Infinity : pb;
      return pa - pb || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    };
  }
  function uniq(list) { var seen = {}, out = []; list.forEach(function (v) { if (!seen[v]) { seen[v] = 1; out.push(v); } }); return out; }

  function fill(select, items, keep, pendingValue) {
    // items: [{value, label, disabled?}]; keeps the current choice when still offered
    var want = pendingValue || keep;
    while (select.firstChild) { select.removeChild(select.firstChild); }
    var found = false;
    items.forEach(function (it) {
      var opt = document.createElement("option");
      opt.value = it.value; opt.textContent = it.label;
      if (it.disabled) { opt.disabled = true; }
      if (String(it.value) === String(want)) { opt.selected = true; found = true; }
      select.appendChild(opt);
    });
    if (!found && items.length) { select.selectedIndex = 0; }
    return select.value;
  }

  function filtered(level) {
    var provider = el.provider.value, region = el.region.value, spot = el.spot.checked;
    var gpu = el.gpu.value, count = el.count.value;
    return offers.filter(function (o) {
      if (provider !== "auto" && o.provider !== provider) { return false; }
      if (level > 0 && region && o.region !== region) { return false; }
      if (level > 1 && gpu && fold(o.gpu) !== fold(gpu)) { return false; }
      if (level > 2 && count !== "" && String(o.gpu_count) !== count) { return false; }
      if (spot && price(o, true) == null) { return false; }
      return true;
    });
  }

  function updateRegions() {
    var pool = filtered(0), auto = el.provider.value === "auto";
    var regions = uniq(pool.map(function (o) { return (auto ? o.provider + "\u0000" : "") + o.region; })).sort();
    var items = [{ value: "", label: "Any region" }].concat(regions.map(function (r) {
      var parts = r.split("\u0000"), name = parts[parts.length - 1];
      return { value: name, label: auto ? name + " (" + parts[0] + ")" : name };
    }));
    fill(el.region, items, el.region.value, pending.region); pending.region = "";
    updateGpus();
  }

  function noGpuReasons(pool) {
    // why none of the places in pool offers a GPU: each provider's own reason
    return uniq(pool.map(function (o) { return noGpu[o.provider + "/" + o.region]; }).filter(Boolean));
  }

  function whyNoGpu(pool) {
    // why the GPU list offers no GPU for the current choices ("" when it offers some)
    if (pool.some(function (o) { return o.gpu !== "none"; })) { return ""; }
    if (el.spot.checked && !el.spot.disabled) {
      var all = offers.filter(function (o) {
        return (el.provider.value === "auto" || o.provider === el.provider.value) && (!el.region.value || o.region === el.region.value);
      });
      if (all.some(function (o) { return o.gpu !== "none"; })) { return "no GPU offer here has a spot price; uncheck Spot"; }
    }
    if (!pool.length) { return el.provider.value === "auto" ? "no offer is open to you on this hub" : "no offer of this provider and region is open to you"; }
    return noGpuReasons(pool).join("; ") || "no offer with a GPU matches these choices";
  }

  function updateGpus() {
    var pool = filtered(1);
    var models = uniq(pool.map(function (o) { return o.gpu; }));
    models.sort(function (a, b) { return a === "none" ? -1 : b === "none" ? 1 : fold(a) < fold(b) ? -1 : 1; });
    var why = whyNoGpu(pool);
    var items = models.map(function (m) {
      var first = pool.filter(function (o) { return o.gpu === m; })[0], mem = first.gpu_memory_gib;
      // gpu_label names slices as people read them: "A100 1g.10gb", "L4 (shared by up to 4)"
      var name = first.gpu_label || m, size = mem ? num(mem) + " GiB" : "";
      if (size) { name = name.slice(-1) === ")" ? name.slice(0, -1) + ", " + size + ")" : name + " (" + size + ")"; }
      return { value: m, label: m === "none" ? "No GPU (CPU only)" + (why ? ": why below" : "") : name };
    });
    if (!items.length) { items = [{ value: "", label: "nothing available", disabled: true }]; }
    fill(el.gpu, items, el.gpu.value, pending.gpu); pending.gpu = "";
    el.gpu.title = why ? "Why no GPU: " + why : "";
    el.gpuWhy.textContent = why ? "Why no GPU: " + why : "";
    updateCounts();
  }

  function updateCounts() {
    var counts = uniq(filtered(2).map(function (o) { return o.gpu_count; })).sort(function (a, b) { return a - b; });
    fill(el.count, counts.map(function (c) { return { value: String(c), label: String(c) }; }), el.count.value, pending.count);
    pending.count = "";
    updateOffers();
  }

  function cell(tr, text, cls) { var td = document.createElement("td"); td.textContent = text; if (cls) { td.className = cls; } tr.appendChild(td); return td; }

  function updateOffers() {
    var spot = el.spot.checked;
    var pool = filtered(3).sort(byPrice(spot));
    var keep = pending.instance || (document.querySelector("input[name=instance_type]:checked") || {}).value || "";
    pending.instance = "";
    while (el.rows.firstChild) { el.rows.removeChild(el.rows.firstChild); }
    var shown = pool.slice(0, MAX_ROWS);
    if (keep && !shown.some(function (o) { return o.instance_type === keep; })) {
      var kept = pool.filter(function (o) { return o.instance_type === keep; })[0];
      if (kept) { shown.push(kept); } else { keep = ""; }
    }
    var any = document.createElement("tr");
    var radio = document.createElement("input");
    radio.type = "radio"; radio.name = "instance_type"; radio.value = ""; radio.checked = !keep; radio.id = "ch-any-type";
    any.appendChild(document.createElement("td")).appendChild(radio);
    var label = cell(any, "", ""); label.colSpan = 7;
    var l = document.createElement("label"); l.htmlFor = "ch-any-type"; l.style.fontWeight = "normal";
    l.textContent = "Cheapest of these, with failover to the next when one has no capacity"; label.appendChild(l);
    el.rows.appendChild(any);
    shown.forEach(function (o) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-key", o.key);
      var r = document.createElement("input");
      r.type = "radio"; r.name = "instance_type"; r.value = o.instance_type;
      r.setAttribute("data-provider", o.provider); r.setAttribute("data-region", o.region);
      r.checked = keep !== "" && o.instance_type === keep;
      tr.appendChild(document.createElement("td")).appendChild(r);
      cell(tr, o.provider + " " + o.region, "ch-where");
      var t = cell(tr, o.instance_type);
      if (o.note) { var n = document.createElement("div"); n.className = "ch-note"; n.textContent = o.note; t.appendChild(n); }
      cell(tr, o.gpu === "none" ? "none" : o.gpu_count + " \u00d7 " + o.gpu);
      cell(tr, num(o.gpu_memory_gib, " GiB"), "num");
      cell(tr, num(o.vcpus) + " / " + num(o.memory_gib, " GiB"), "num");
      cell(tr, money(o.price_hour, o.price_partial), "num");
      cell(tr, money(o.spot_price_hour, o.price_partial && o.spot_price_hour != null), "num");
      el.rows.appendChild(tr);
    });
    if (!pool.length) { var e = document.createElement("tr"); cell(e, "No offer matches these choices.").colSpan = 8; el.rows.appendChild(e); }
    el.more.textContent = pool.length > shown.length ? (pool.length - shown.length) + " more offer(s), dearer; narrow the region to see them." : "";
    updateAuto(pool);
    updateZones();
  }

  function chosenOffer() {
    var r = document.querySelector("input[name=instance_type]:checked");
    if (!r || !r.value) { return null; }
    var provider = r.getAttribute("data-provider"), region = r.getAttribute("data-region");
    return offers.filter(function (o) { return o.instance_type === r.value && o.provider === provider && o.region === region; })[0] || null;
  }

  function updateZones() {
    var o = chosenOffer();
    var zones = o ? o.zones : [];
    fill(el.zone, [{ value: "", label: "Any zone" }].concat(zones.map(function (z) { return { value: z, label: z }; })),
         el.zone.value, pending.zone);
    pending.zone = "";
    el.zone.disabled = !o || !zones.length;
    var why = !o ? "pick a machine in the table to choose its zone"
      : !zones.length ? "no zones to choose for this offer" : "";
    el.zone.title = why;
    el.zoneWhy.textContent = why;
  }

  function updateAuto(pool) {
    var spot = el.spot.checked;
    // Auto ignores provider and region: the cheapest offer with this GPU and count anywhere
    var gpu = el.gpu.value, count = el.count.value;
    var all = offers.filter(function (o) {
      return (!gpu || fold(o.gpu) === fold(gpu)) && (count === "" || String(o.gpu_count) === count) && price(o, spot) != null;
    }).sort(byPrice(spot));
    var best = all[0];
    el.auto.textContent = best
      ? best.provider + " " + best.region + " " + best.instance_type + ": " +
        (best.gpu === "none" ? "no GPU" : best.gpu_count + " \u00d7 " + best.gpu) + ", " +
        money(price(best, spot), best.price_partial) + "/h" + (spot ? " spot" : "")
      : "nothing fits these choices";
  }

  function fillRay() {
    var models = uniq(offers.map(function (o) { return o.gpu; })).filter(function (m) { return m !== "none"; }).sort();
    var why = models.length ? "" : (noGpuReasons(offers).join("; ") || "no offer open to you has a GPU");
    fill(el.rayGpu, [{ value: "none", label: "No GPU" }].concat(models.map(function (m) { return { value: m, label: m }; })),
         el.rayGpu.getAttribute("data-last") || "none");
    el.rayGpu.title = why ? "Why no GPU: " + why : "";
    el.rayWhy.textContent = why ? "Why no GPU: " + why : "";
  }

  el.provider.addEventListener("change", updateRegions);
  el.region.addEventListener("change", updateGpus);
  el.gpu.addEventListener("change", updateCounts);
  el.count.addEventListener("change", updateOffers);
  el.spot.addEventListener("change", updateRegions);
  el.rows.addEventListener("change", function (ev) {
    if (ev.target && ev.target.name === "instance_type") {
      var o = chosenOffer();
      // picking a machine pins its region too, so the hub gets a consistent choice
      if (o && el.region.value !== o.region) { pending.instance = o.instance_type; el.provider.value = o.provider; pending.region = o.region; pending.gpu = o.gpu; pending.count = String(o.gpu_count); updateRegions(); return; }
      updateZones();
    }
  });
  fillRay();
  updateRegions();
})();
