// Runs in <head> before the first paint: the theme chosen with the toggle, if any, else the
// system's (the stylesheet's prefers-color-scheme). A classic script, since a module would run
// after the page is drawn and flash the other theme.
(function () {
  try {
    var theme = localStorage.getItem("theme");
    if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
  } catch (e) { /* storage blocked: follow the system */ }
  document.documentElement.classList.add("js");
})();
