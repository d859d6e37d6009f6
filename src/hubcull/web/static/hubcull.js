// hubcull's pages: show times in the viewer's own time zone, and keep countdowns ticking.
// No framework, no inline script (the Content-Security-Policy allows scripts from hubcull only).
(function () {
  "use strict";
  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60), r = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + (m < 10 ? "0" : "") + m + "m";
    if (m) return m + "m " + (r < 10 ? "0" : "") + r + "s";
    return r + "s";
  }

  function localTimes() {
    document.querySelectorAll("time.local").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) el.textContent = fmt.format(when);
    });
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".countdown[data-due]").forEach(function (el) {
      var due = Date.parse(el.getAttribute("data-due"));
      if (!isNaN(due)) el.textContent = due <= now ? "now" : "in " + duration((due - now) / 1000);
    });
    document.querySelectorAll(".since[data-since]").forEach(function (el) {
      var since = Date.parse(el.getAttribute("data-since"));
      if (!isNaN(since)) el.textContent = duration((now - since) / 1000);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    tick();
    setInterval(tick, 1000);
  });
})();
