// The login shell (served without the token). Keeps the token in sessionStorage (this tab only),
// checks it against the API, then fetches the dashboard's code with it and runs it. The token only
// ever travels in the Authorization header: never in a URL, so never in a log or the history.
"use strict";
(function () {
  const KEY = "bertfleet.token";
  const $ = (id) => document.getElementById(id);

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, { Authorization: "Bearer " + sessionStorage.getItem(KEY) });
    opts.cache = "no-store";
    const response = await fetch(path, opts);
    if (response.status === 401) { logout("The token was refused; sign in again."); throw new Error("unauthorized"); }
    return response;
  }

  function showLogin(message) {
    $("app").hidden = true; $("app").replaceChildren(); $("nav").hidden = true;
    $("login").hidden = false; $("login-error").textContent = message || ""; $("token").focus();
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    if (window.bertfleet && window.bertfleet.stop) window.bertfleet.stop();
    showLogin(message);
  }

  async function asBlobUrl(path, type) {
    const response = await api(path);
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return URL.createObjectURL(new Blob([await response.text()], { type: type }));
  }

  async function start() {
    try {
      const check = await api("/jobs?limit=1");
      if (!check.ok) throw new Error("HTTP " + check.status);
      const css = document.createElement("link");
      css.rel = "stylesheet"; css.href = await asBlobUrl("/ui/app.css", "text/css");
      document.head.appendChild(css);
      window.bertfleet = { api: api, logout: logout };
      const script = document.createElement("script");
      script.src = await asBlobUrl("/ui/app.js", "text/javascript");
      document.head.appendChild(script);
      $("login").hidden = true; $("nav").hidden = false; $("app").hidden = false;
    } catch (err) {
      if (String(err.message) !== "unauthorized") showLogin("Cannot reach the API: " + err.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (!token) return;
      sessionStorage.setItem(KEY, token);
      start();
    });
    $("logout").addEventListener("click", () => logout(""));
    if (sessionStorage.getItem(KEY)) start(); else showLogin("");
  });
})();
