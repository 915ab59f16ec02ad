"""Hostile strings for the workbench: each one, if it ever ran or loaded anything, would
set ``window.__xss``, open a dialog or send a request the test sees."""

from __future__ import annotations

PAYLOADS: list[str] = [
    "<script>window.__xss=1;fetch('/pwned/1')</script>",
    "<img src=x onerror=\"window.__xss=2;fetch('/pwned/2')\">",
    "<svg onload=\"window.__xss=3\"><script>fetch('/pwned/3')</script></svg>",
    "[click me](javascript:window.__xss=4)",
    "![chart](http://evil.example/pwned/5.png)",
    "<a href=\"javascript:fetch('/pwned/6')\" id=xss6>open</a>",
    "<style>@import url(http://evil.example/pwned/7.css);</style>",
    '<div style="background:url(/pwned/8)">styled</div>',
    '<iframe src="javascript:parent.__xss=9"></iframe>',
    "<math><mtext><table><mglyph><style><img src=x onerror=fetch('/pwned/10')>",
    "{{constructor.constructor('window.__xss=11')()}}",
    '<object data="data:text/html,<script>parent.__xss=12</script>"></object>',
    '"><img src=/pwned/13>',
    '<base href="http://evil.example/">',
    '<meta http-equiv="refresh" content="0;url=/pwned/15">',
    "<link rel=stylesheet href=http://evil.example/pwned/16.css>",
    "javascript:fetch('/pwned/17')",
    "[data](data:text/html,<script>window.__xss=18</script>)",
    '<input autofocus onfocus="window.__xss=19">',
    '<details open ontoggle="window.__xss=20">',
    "<form action=/pwned/21><button>go</button></form>",
    "input[value^=a]{background:url(/pwned/22)}",
    '<img srcset="/pwned/23 1x">',
    '<svg><a xlink:href="javascript:window.__xss=24"><text y=20>x</text></a></svg>',
    '<noscript><p title="</noscript><img src=x onerror=window.__xss=25>">',
]
"""Markup, event handlers, script URLs, CSS exfiltration, markdown link and image tricks,
template injection and mutation-XSS shapes."""

FILE_NAMES: list[str] = [
    "<img src=x onerror=window.__xss=31>.csv",
    "<script>window.__xss=32<\\script>.html",
    "report.html",
    '"><svg onload=window.__xss=33>.txt',
    "javascript:window.__xss=34",
]
"""File names that look like HTML (no '/', which a file name cannot hold)."""
