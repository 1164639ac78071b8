// Applies the saved theme before the first paint (a classic script: the CSP allows no inline script).
(function () {
  try {
    var theme = localStorage.getItem("citechat.theme");
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  } catch (e) { /* storage disabled: follow the system */ }
})();
