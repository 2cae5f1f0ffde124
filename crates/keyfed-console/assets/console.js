// keyfed console: live notifications over Server-Sent Events, and a
// confirm before destructive forms. Everything else works without it.
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
  var table = document.getElementById("notifications");
  if (!table || !window.EventSource) { return; }
  var status = document.getElementById("live");
  var after = table.getAttribute("data-after-seq") || "0";
  var source = new EventSource("/events?after_seq=" + encodeURIComponent(after));
  source.addEventListener("open", function () { status.textContent = "live"; });
  source.addEventListener("error", function () { status.textContent = "reconnecting…"; });
  source.addEventListener("notification", function (e) {
    var n = JSON.parse(e.data);
    var row = document.createElement("tr");
    row.className = "fresh";
    row.setAttribute("data-seq", n.seq);
    [n.seq, n.at, n.event, n.keyId || "", n.message].forEach(function (v) {
      var td = document.createElement("td");
      td.textContent = v; // text only: never parsed as HTML
      row.appendChild(td);
    });
    var body = table.tBodies[0];
    body.insertBefore(row, body.firstChild);
  });
})();
