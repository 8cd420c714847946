"""Small fixes to the generated HTML, found by the browser test (tests/test_site.py).

- sphinx-thebe registers its inline configuration script once per read pass, so a page
  built from a cached environment carries ``const THEBE_JS_URL = ...`` twice: a JavaScript
  SyntaxError. Keep the first copy of every script.
- The pydata theme under sphinx-book-theme renders an empty ``default_mode``, and its script
  then logs "Got invalid theme mode" as a console error. Default to the light mode.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for js in context.get("script_files", []):
        key = (js.filename or "", js.attributes.get("body"))  # inline scripts: None or ""
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"][:] = unique  # in place: other handlers hold the same list
    if not context.get("default_mode"):
        context["default_mode"] = "light"


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

