// Render the math that pymdownx.arithmatex (generic) marks, on every page, with the KaTeX
// vendored beside this file (javascripts/katex/, MIT licence): the site needs no network.
function renderMath(root) {
  renderMathInElement(root, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
    ignoredClasses: ["highlight"],
    throwOnError: false,
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderMath(body));  // Material's instant navigation
} else {
  document.addEventListener("DOMContentLoaded", () => renderMath(document.body));
}
