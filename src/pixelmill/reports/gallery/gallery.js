// pixelmill gallery: the rows are one JSON blob (#gallery-data); only the cards in view are in the DOM.
// Every value from the data is set as text or as an attribute, never parsed as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gallery-data").textContent);
  var rows = data.rows;
  var GAP = 10, PAD = 6, TEXT = 62;  // px: between cards, inside a card, the text under the images
  var STORE = "pixelmill-gallery:" + data.run;  // marks, per run
  var SIZE_STORE = "pixelmill-gallery:size";    // density, for every gallery
  var $ = function (id) { return document.getElementById(id); };
  var grid = $("grid"), shown = $("shown"), search = $("search"), sizeInput = $("size");
  var lightbox = $("lightbox"), exportLink = $("export"), marksLine = $("marks");
  var state = { status: "all", step: "", kind: "", model: "", mark: "", query: "", sort: "row" };
  var view = [];          // indices into rows, filtered and sorted
  var live = new Map();   // view position -> card element in the DOM
  var layout = { cols: 1, cw: 0, ch: 0 };
  var current = -1;       // view position shown in the lightbox
  var exportUrl = null;

  // ------------------------------------------------------------ storage (best effort: a page may forbid it)
  function load(key, fallback) {
    try { var v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v); }
    catch (e) { return fallback; }
  }
  function save(key, value) { try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* none */ } }
  var marks = load(STORE, {});  // identity -> "keep" | "reject"
  if (typeof marks !== "object" || marks === null) { marks = {}; }

  // ------------------------------------------------------------ helpers
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  var SCHEME = /^[a-z][a-z0-9+.-]*:/i;
  function safe(src) {  // data:image/... or a relative path; anything else is not loaded
    return typeof src === "string" && (src.indexOf("data:image/") === 0 || !SCHEME.test(src)) ? src : null;
  }
  function markOf(r) { return r.id ? marks[r.id] || "" : ""; }
  function stepOf(r) {
    if (!state.step) { return null; }
    for (var i = 0; i < r.st.length; i++) { if (r.st[i].n === state.step) { return r.st[i]; } }
    return { n: state.step, s: r.s, m: "", e: null };
  }
  function searchText(r) {
    if (r._q === undefined) {
      var parts = [r.n, r.s];
      r.p.forEach(function (p) { parts.push(p[1]); });
      r.st.forEach(function (s) { parts.push(s.m); });
      r._q = parts.concat(r.er, r.no).join(" ").toLowerCase();
    }
    return r._q;
  }

  // ------------------------------------------------------------ filter and sort
  function matches(r) {
    var s = stepOf(r);
    if (state.status !== "all" && (s ? s.s : r.s) !== state.status) { return false; }
    if (state.kind && !(s ? s.e === state.kind : r.st.some(function (x) { return x.e === state.kind; }))) {
      return false;
    }
    if (state.model && !(s ? s.m === state.model : r.st.some(function (x) { return x.m === state.model; }))) {
      return false;
    }
    if (state.mark && (markOf(r) || "none") !== state.mark) { return false; }
    return !state.query || searchText(r).indexOf(state.query) !== -1;
  }
  var SORTS = {
    row: function (a, b) { return rows[a].i - rows[b].i; },
    "cost-desc": function (a, b) { return rows[b].c - rows[a].c || rows[a].i - rows[b].i; },
    "cost-asc": function (a, b) { return rows[a].c - rows[b].c || rows[a].i - rows[b].i; },
    "time-desc": function (a, b) { return (rows[b].t || 0) - (rows[a].t || 0) || rows[a].i - rows[b].i; },
    "time-asc": function (a, b) {
      return (rows[a].t || Infinity) - (rows[b].t || Infinity) || rows[a].i - rows[b].i;
    }
  };
  function refilter() {
    view = [];
    for (var i = 0; i < rows.length; i++) { if (matches(rows[i])) { view.push(i); } }
    if (state.sort !== "row") { view.sort(SORTS[state.sort] || SORTS.row); }
    shown.textContent = String(view.length);
    document.querySelectorAll("button[data-filter]").forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-filter") === state.status ? "true" : "false");
    });
    redraw();
  }

  // ------------------------------------------------------------ the virtual grid
  function measure() {
    var size = Number(sizeInput.value) || 180;
    var cw = size + 2 * PAD + 4, ch = size + 2 * PAD + 4 + TEXT;
    var width = grid.clientWidth || document.documentElement.clientWidth - 40;
    layout = { cols: Math.max(1, Math.floor((width + GAP) / (cw + GAP))), cw: cw, ch: ch, size: size };
    grid.style.setProperty("--size", size + "px");
  }
  function redraw() {
    live.forEach(function (node) { node.remove(); });
    live.clear();
    var lines = Math.ceil(view.length / layout.cols);
    grid.style.height = Math.max(0, lines * (layout.ch + GAP) - GAP) + "px";
    $("empty").hidden = view.length !== 0;
    render();
  }
  function render() {
    var top = grid.getBoundingClientRect().top;
    var line = layout.ch + GAP;
    var first = Math.max(0, Math.floor(-top / line) - 1);
    var last = Math.ceil((window.innerHeight - top) / line) + 1;
    var from = first * layout.cols, to = Math.min(view.length, (last + 1) * layout.cols);
    live.forEach(function (node, pos) {
      if (pos < from || pos >= to) { node.remove(); live.delete(pos); }
    });
    var fragment = document.createDocumentFragment();
    for (var pos = from; pos < to; pos++) {
      if (!live.has(pos)) {
        var node = card(pos);
        live.set(pos, node);
        fragment.appendChild(node);
      }
    }
    grid.appendChild(fragment);
  }
  var pending = false;
  function schedule() {
    if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; render(); }); }
  }

  function images(r, box, limit) {
    var count = 0;
    r.g.forEach(function (stage, n) {
      if (n && (!limit || count < limit)) { box.appendChild(el("span", "arrow", "\u2192")); }
      stage.im.forEach(function (im) {
        if (limit && count >= limit) { return; }
        count += 1;
        var src = safe(limit ? im.t : (im.h || im.t));
        if (src) {
          var img = el("img");
          img.alt = stage.l;
          img.loading = "lazy";
          img.decoding = "async";
          img.src = src;
          box.appendChild(img);
        } else {
          box.appendChild(el("div", "missing", im.x || "not an image"));
        }
      });
    });
  }
  function card(pos) {
    var r = rows[view[pos]];
    var node = el("article", "card " + r.s + (markOf(r) ? " " + markOf(r) : ""));
    node.setAttribute("data-pos", String(pos));
    node.setAttribute("data-status", r.s);
    node.style.width = layout.cw + "px";
    node.style.height = layout.ch + "px";
    node.style.transform = "translate(" + (pos % layout.cols) * (layout.cw + GAP) + "px," +
      Math.floor(pos / layout.cols) * (layout.ch + GAP) + "px)";
    var box = el("div", "imgs");
    box.style.height = layout.size + "px";
    images(r, box, 4);
    node.appendChild(box);
    if (r.er.length) { node.appendChild(el("p", "prompt error", r.er[0])); }
    else { node.appendChild(el("p", "prompt", r.p.length ? r.p[r.p.length - 1][1] : "")); }
    node.title = r.p.map(function (p) { return p[1]; }).join("\n");
    var meta = el("div", "meta");
    meta.appendChild(el("span", "badge " + r.s, r.s));
    meta.appendChild(el("span", "name", r.n));
    meta.appendChild(el("span", "cost", "$" + r.c.toFixed(4)));
    if (r.id) {  // over the images' top right corner, leaving the line below to the id
      var over = el("div", "marks-over");
      node.appendChild(over);
      ["keep", "reject"].forEach(function (m) {
        var b = el("button", "mk " + m + (markOf(r) === m ? " on" : ""), m === "keep" ? "\u2713" : "\u2715");
        b.type = "button";
        b.setAttribute("data-mark", m);
        b.title = m === "keep" ? "Keep (K)" : "Reject (X)";
        b.setAttribute("aria-pressed", markOf(r) === m ? "true" : "false");
        over.appendChild(b);
      });
    }
    node.appendChild(meta);
    return node;
  }

  // ------------------------------------------------------------ marks
  function setMark(r, mark) {
    if (!r || !r.id) { return; }
    if (!mark || marks[r.id] === mark) { delete marks[r.id]; } else { marks[r.id] = mark; }
    save(STORE, marks);
    updateMarks();
    if (state.mark) { refilter(); } else { redraw(); }
    if (current >= 0) { showLightbox(); }
  }
  function updateMarks() {
    var keep = 0, reject = 0, lines = [];
    rows.forEach(function (r) {
      var m = markOf(r);
      if (!m) { return; }
      if (m === "keep") { keep += 1; } else { reject += 1; }
      lines.push(JSON.stringify({ identity: r.id, key: r.k, row: r.i, name: r.n, mark: m }) + "\n");
    });
    marksLine.textContent = "\u2713 " + keep + " kept \u00b7 \u2715 " + reject + " rejected";
    if (exportUrl) { URL.revokeObjectURL(exportUrl); exportUrl = null; }
    if (lines.length) {
      exportUrl = URL.createObjectURL(new Blob(lines, { type: "application/x-ndjson" }));
      exportLink.href = exportUrl;
      exportLink.removeAttribute("aria-disabled");
    } else {
      exportLink.removeAttribute("href");
      exportLink.setAttribute("aria-disabled", "true");
    }
    exportLink.textContent = "Export marks (" + lines.length + ")";
  }

  // ------------------------------------------------------------ the lightbox
  function openLightbox(pos) {
    current = pos;
    lightbox.hidden = false;
    document.body.classList.add("locked");
    showLightbox();
  }
  function closeLightbox() {
    if (current < 0) { return; }
    var line = Math.floor(current / layout.cols) * (layout.ch + GAP);
    current = -1;
    lightbox.hidden = true;
    document.body.classList.remove("locked");
    var top = grid.getBoundingClientRect().top + window.scrollY;
    if (top + line < window.scrollY + 120 || top + line + layout.ch > window.scrollY + window.innerHeight) {
      window.scrollTo(0, Math.max(0, top + line - 140));
    }
    render();
  }
  function move(step) {
    if (current < 0 || !view.length) { return; }
    current = Math.min(view.length - 1, Math.max(0, current + step));
    showLightbox();
  }
  function showLightbox() {
    if (current >= view.length) { current = view.length - 1; }
    if (current < 0) { closeLightbox(); return; }
    var r = rows[view[current]];
    $("lb-pos").textContent = (current + 1) + " / " + view.length;
    $("lb-title").textContent = r.n + " \u00b7 " + r.s;
    var mark = markOf(r);
    ["keep", "reject"].forEach(function (m) {
      var b = $("lb-" + m);
      b.disabled = !r.id;
      b.className = m + (mark === m ? " on" : "");
      b.setAttribute("aria-pressed", mark === m ? "true" : "false");
    });
    var stages = $("lb-stages");
    stages.textContent = "";
    r.g.forEach(function (stage) {
      var fig = el("figure");
      fig.appendChild(el("figcaption", "", stage.l));
      if (stage.tt) { fig.title = stage.tt; }
      var box = el("div", "imgs");
      images({ g: [stage] }, box, 0);
      fig.appendChild(box);
      stages.appendChild(fig);
    });
    var text = $("lb-text");
    text.textContent = "";
    r.p.forEach(function (p) { text.appendChild(el("p", "prompt-full", (p[0] ? p[0] + ": " : "") + p[1])); });
    r.er.forEach(function (e) { text.appendChild(el("p", "error", e)); });
    r.no.forEach(function (n) { text.appendChild(el("p", "note", n)); });
    var meta = el("p", "meta");
    var models = r.st.map(function (s) { return s.m; }).filter(function (m, i, all) { return all.indexOf(m) === i; });
    [r.s, "row " + r.i, r.k ? "key " + r.k : "", models.join(", "), "$" + r.c.toFixed(4),
      r.t ? new Date(r.t * 1000).toLocaleString() : "", mark ? "marked " + mark : ""].forEach(function (t) {
      if (t) { meta.appendChild(el("span", "", t)); }
    });
    text.appendChild(meta);
  }

  // ------------------------------------------------------------ events
  document.querySelectorAll("button[data-filter]").forEach(function (b) {
    b.addEventListener("click", function () { state.status = b.getAttribute("data-filter"); refilter(); });
  });
  [["f-step", "step"], ["f-kind", "kind"], ["f-model", "model"], ["f-mark", "mark"], ["sort", "sort"]]
    .forEach(function (pair) {
      var select = $(pair[0]);
      if (select) { select.addEventListener("change", function () { state[pair[1]] = select.value; refilter(); }); }
    });
  search.addEventListener("input", function () { state.query = search.value.trim().toLowerCase(); refilter(); });
  sizeInput.addEventListener("input", function () {
    save(SIZE_STORE, Number(sizeInput.value));
    measure();
    redraw();
  });
  grid.addEventListener("click", function (event) {
    var node = event.target.closest(".card");
    if (!node) { return; }
    var pos = Number(node.getAttribute("data-pos"));
    var button = event.target.closest("button[data-mark]");
    if (button) { setMark(rows[view[pos]], button.getAttribute("data-mark")); return; }
    openLightbox(pos);
  });
  $("lb-prev").addEventListener("click", function () { move(-1); });
  $("lb-next").addEventListener("click", function () { move(1); });
  $("lb-close").addEventListener("click", closeLightbox);
  $("lb-keep").addEventListener("click", function () { setMark(rows[view[current]], "keep"); });
  $("lb-reject").addEventListener("click", function () { setMark(rows[view[current]], "reject"); });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var typing = /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName || "");
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;  // K and k alike
    if (current >= 0) {
      var act = { ArrowRight: function () { move(1); }, ArrowLeft: function () { move(-1); }, Escape: closeLightbox,
        k: function () { setMark(rows[view[current]], "keep"); },
        x: function () { setMark(rows[view[current]], "reject"); },
        u: function () { setMark(rows[view[current]], ""); } }[key];
      if (act) { event.preventDefault(); act(); }
    } else if (!typing && key === "/") {
      event.preventDefault();
      search.focus();
    } else if (!typing && (key === "+" || key === "=" || key === "-")) {
      sizeInput.value = String(Number(sizeInput.value) + (key === "-" ? -20 : 20));
      sizeInput.dispatchEvent(new Event("input"));
    }
  });
  window.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", function () { measure(); redraw(); });

  // ------------------------------------------------------------ start
  var size = load(SIZE_STORE, null);
  if (typeof size === "number") { sizeInput.value = String(size); }
  var wanted = (location.hash || "").slice(1);
  if (["all", "done", "failed", "pending"].indexOf(wanted) !== -1) { state.status = wanted; }
  measure();
  updateMarks();
  refilter();
  document.documentElement.setAttribute("data-ready", String(Math.round(performance.now())));
})();
