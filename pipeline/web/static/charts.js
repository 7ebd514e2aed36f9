/* creditwatch charts: read the JSON data blocks the pages render and draw them with Chart.js.
   No inline script, so the Content-Security-Policy can forbid it. */
(function () {
  "use strict";
  if (typeof Chart === "undefined") { return; }
  var COLORS = { exposure: "#2463b0", limit: "#6b7280", risk: "#c2410c",
                 info: "#64748b", warning: "#d97706", critical: "#b91c1c", dso: "#2463b0" };
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;

  function data(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  function money(value) {
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: 0 });
  }

  var customer = data("customer-chart-data");
  var canvas = document.getElementById("customer-chart");
  if (customer && canvas) {
    new Chart(canvas, {
      type: "line",
      data: {
        labels: customer.labels,
        datasets: [
          { label: "Exposure (" + customer.currency + ")", data: customer.exposure, borderColor: COLORS.exposure,
            backgroundColor: "rgba(36,99,176,0.12)", fill: true, yAxisID: "money", pointRadius: 0, tension: 0.2 },
          { label: "Credit limit", data: customer.limit, borderColor: COLORS.limit, borderDash: [6, 4],
            yAxisID: "money", pointRadius: 0, stepped: true },
          { label: "Risk score", data: customer.risk, borderColor: COLORS.risk, yAxisID: "risk", pointRadius: 0,
            tension: 0.2 }
        ]
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          money: { position: "left", beginAtZero: true, ticks: { callback: money } },
          risk: { position: "right", min: 0, max: 1, grid: { drawOnChartArea: false },
                  title: { display: true, text: "risk score" } },
          x: { ticks: { maxTicksLimit: 12 } }
        }
      }
    });
  }

  var portfolio = data("portfolio-chart-data");
  if (portfolio) {
    var dso = document.getElementById("dso-chart");
    if (dso) {
      new Chart(dso, {
        type: "line",
        data: { labels: portfolio.dso.labels,
                datasets: [{ label: "DSO (days)", data: portfolio.dso.values, borderColor: COLORS.dso,
                             pointRadius: 0, tension: 0.2 }] },
        options: { plugins: { legend: { display: false } }, scales: { x: { ticks: { maxTicksLimit: 8 } } } }
      });
    }
    var alerts = document.getElementById("alerts-chart");
    if (alerts) {
      new Chart(alerts, {
        type: "bar",
        data: { labels: portfolio.alerts.labels,
                datasets: ["critical", "warning", "info"].map(function (s) {
                  return { label: s, data: portfolio.alerts[s], backgroundColor: COLORS[s] };
                }) },
        options: { scales: { x: { stacked: true, ticks: { maxTicksLimit: 12 } },
                             y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } }
      });
    }
  }
})();
