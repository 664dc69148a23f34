// Small helps for the forms; everything works without this script. The organisation picker
// (notifier/orgtree.py): the tree is filtered as one types into its search field (the server
// resolves the typed name). Topics: ticking a single topic selects "Nur diese Themen".
(function () {
  "use strict";
  var FOLD = { "ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss" };

  function fold(text) {
    return text.toLowerCase().replace(/[äöüß]/g, function (c) { return FOLD[c]; })
      .replace(/\s+/g, " ").trim();
  }

  function filter(tree, query) {
    var wanted = fold(query);
    var checks = tree.querySelectorAll(".check");
    checks.forEach(function (check) {
      var label = check.querySelector("label");
      var fits = !wanted || fold(label ? label.textContent : "").indexOf(wanted) !== -1;
      check.hidden = !fits;
    });
    tree.querySelectorAll("details.orgtree-zweig").forEach(function (branch) {
      var branchName = fold(branch.querySelector("summary").textContent);
      var any = branch.querySelector(".check:not([hidden])") !== null;
      if (wanted && branchName.indexOf(wanted) !== -1) {
        branch.querySelectorAll(".check").forEach(function (c) { c.hidden = false; });
        any = true;
      }
      branch.hidden = !any;
      if (wanted) { branch.open = any; }
    });
    if (wanted) { tree.open = true; }
  }

  function setUp(input) {
    var tree = document.getElementById(input.getAttribute("data-orgtree"));
    if (!tree) { return; }
    var multiple = tree.querySelector("input[type=checkbox]") !== null;
    input.addEventListener("input", function () { filter(tree, input.value); });
    if (!multiple) {
      tree.addEventListener("change", function (event) {
        var label = tree.querySelector("label[for='" + event.target.id + "']");
        if (label && event.target.checked) {
          input.value = "";
          filter(tree, "");
        }
      });
    }
  }

  document.querySelectorAll("input[data-orgtree]").forEach(setUp);

  var some = document.getElementById("some_topics");
  if (some) {
    document.querySelectorAll("input[name=topics]").forEach(function (box) {
      box.addEventListener("change", function () { if (box.checked) { some.checked = true; } });
    });
  }
}());
