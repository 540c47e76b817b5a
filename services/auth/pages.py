"""The sign-in page of the authorization code flow, and the page of a request that cannot go
back to its app: server-rendered HTML, no script, usable with a keyboard and a screen reader.

Everything shown that came from a request or a client registration is HTML-escaped. Each page
is answered with a Content-Security-Policy that allows its one inline style (by hash), posts
only to this server (and, after the post, the redirect to the client's own origin), and no
framing; it is never cached, and sends no Referer to other sites (its URL holds the request).
"""

from __future__ import annotations

import base64
import hashlib
import html
import urllib.parse
from dataclasses import dataclass

from services.auth.oauth import Reply

__all__ = ["ErrorPage", "SignInPage", "error_page", "sign_in_page"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1d21}
main{max-width:24rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;
box-shadow:0 1px 4px rgba(0,0,0,.15)}
h1{font-size:1.5rem;margin:0 0 .25rem}
label{display:block;margin-top:1rem;font-weight:600}
input{box-sizing:border-box;width:100%;padding:.6rem;margin-top:.25rem;font-size:1rem;
border:1px solid #767676;border-radius:4px}
input:focus,button:focus{outline:3px solid #1a5fb4;outline-offset:2px}
.problem{color:#a51d2d;background:#fbe9eb;padding:.75rem;border-radius:4px}
.buttons{display:flex;gap:.5rem;margin-top:1.5rem}
button{padding:.6rem 1rem;font-size:1rem;border-radius:4px;border:1px solid #1a5fb4;cursor:pointer}
button[value=allow]{background:#1a5fb4;color:#fff}
button[value=deny],button[name=provider]{background:#fff;color:#1a5fb4}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_CONSENT = (
    "know who you are",
    "see your email address",
    "act for you in this system, as any signed-in person can (never with your roles, such as admin)",
)


@dataclass(frozen=True, slots=True)
class SignInPage:
    app_name: str
    third_party: bool
    """Asks for consent too: the app is not this deployment's own."""
    action: str
    """Where the form posts: this endpoint with the request's query."""
    token: str
    redirect_uri: str
    email: str = ""
    problem: str = ""
    status: int = 200
    providers: tuple[str, ...] = ()
    """Outside providers to sign in through instead, by alias."""
    provider_urls: tuple[str, ...] = ()
    """Where their sign-in pages are (the form's post is redirected there)."""


@dataclass(frozen=True, slots=True)
class ErrorPage:
    problem: str
    status: int = 400


def sign_in_page(page: SignInPage, *, set_cookie: str = "") -> Reply:
    app = html.escape(page.app_name)
    problem = (
        f'<p class="problem" role="alert" id="problem">{html.escape(page.problem)}</p>'
        if page.problem
        else ""
    )
    described = ' aria-describedby="problem"' if page.problem else ""
    consent = ""
    if page.third_party:
        items = "".join(f"<li>{item}</li>" for item in _CONSENT)
        consent = f'<h2 id="consent">{app} will be able to</h2><ul aria-labelledby="consent">{items}</ul>'
    allow = "Sign in and allow" if page.third_party else "Sign in"
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in to {app}</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>Sign in</h1>
<p>to continue to <strong>{app}</strong></p>
{problem}
<form method="post" action="{html.escape(page.action)}">
<input type="hidden" name="csrf_token" value="{html.escape(page.token)}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required maxlength="254" \
value="{html.escape(page.email)}"{described}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required \
maxlength="256"{described}>
{consent}
<div class="buttons">
<button type="submit" name="decision" value="allow">{allow}</button>
<button type="submit" name="decision" value="deny" formnovalidate>Cancel</button>
</div>
</form>
{_elsewhere(page)}
</main>
</body>
</html>
"""
    # The posts go here, and their redirects to the app or to a provider the person chose.
    urls = (page.redirect_uri, *page.provider_urls)
    targets = " ".join(dict.fromkeys(_form_targets(url) for url in urls))
    headers = _page_headers(targets)
    if set_cookie:
        headers += (("set-cookie", set_cookie),)
    return Reply(page.status, headers, body.encode(), "text/html; charset=utf-8")


def _elsewhere(page: SignInPage) -> str:
    """The form of buttons signing in through an outside provider instead."""
    if not page.providers:
        return ""
    buttons = "".join(
        f'<button type="submit" name="provider" value="{html.escape(alias)}">{html.escape(alias)}</button>'
        for alias in page.providers
    )
    return f"""<form method="post" action="{html.escape(page.action)}" aria-labelledby="elsewhere">
<input type="hidden" name="csrf_token" value="{html.escape(page.token)}">
<h2 id="elsewhere">Or sign in with</h2>
<div class="buttons">{buttons}</div>
</form>"""


def error_page(page: ErrorPage) -> Reply:
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>This sign-in link does not work</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>This sign-in link does not work</h1>
<p class="problem" role="alert">{html.escape(page.problem)}</p>
<p>Go back to the app you came from and start the sign-in again. If this keeps happening, tell
the app's developers: the link they sent you here with is not one this server accepts.</p>
</main>
</body>
</html>
"""
    return Reply(page.status, _page_headers(""), body.encode(), "text/html; charset=utf-8")


def _form_targets(redirect_uri: str) -> str:
    """The CSP source of the client's redirect URI: the browser applies ``form-action`` to the
    redirect that follows the post too."""
    parts = urllib.parse.urlsplit(redirect_uri)
    if (parts.scheme in ("http", "https") and not parts.hostname) or parts.netloc.startswith("["):
        return f"{parts.scheme}:"  # CSP has no IPv6 host source: the scheme is the narrowest
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:" if parts.scheme else ""


def _page_headers(form_targets: str) -> tuple[tuple[str, str], ...]:
    policy = (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self' {form_targets}".rstrip()
        + "; frame-ancestors 'none'; base-uri 'none'"
    )
    return (
        ("content-security-policy", policy),
        ("cache-control", "no-store"),
        # Not no-referrer: a form posted under it says `Origin: null`, which `forms` refuses.
        ("referrer-policy", "same-origin"),
    )
