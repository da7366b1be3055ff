// The console's only script besides htmx (its CSP allows no inline script).
document.addEventListener("change", function (event) {
  var box = event.target;
  if (!box.classList || !box.classList.contains("select-all")) return;
  var table = box.closest("table");
  table.querySelectorAll("input[type=checkbox][name=id]").forEach(function (item) {
    item.checked = box.checked;
  });
});
