// Light or dark: the system's preference (prefers-color-scheme) until the person picks one with
// the toggle, which is then kept. style.css reads :root[data-theme] through light-dark().
const systemDark = matchMedia("(prefers-color-scheme: dark)");

function theme() {
  return document.documentElement.dataset.theme ?? (systemDark.matches ? "dark" : "light");
}

/** Applies the kept choice and makes `button` (aria-pressed: dark) switch between the two. */
export function setupThemeToggle(button) {
  const kept = localStorage.getItem("theme");
  if (kept === "light" || kept === "dark") document.documentElement.dataset.theme = kept;
  const show = () => button.setAttribute("aria-pressed", String(theme() === "dark"));
  button.addEventListener("click", () => {
    const next = theme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("theme", next);
    show();
  });
  systemDark.addEventListener("change", show);
  show();
}
