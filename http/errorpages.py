"""Error pages: the status phrases and descriptions of the built-in jinja2 error page.
Part of the static file service (site.py), which also serves a site's own
``<status>.html``."""

from __future__ import annotations

from http import HTTPStatus

import jinja2

# RFC 9110's names where Python's HTTPStatus (3.11) still has the older ones
PHRASES = {413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable"}
_DESCRIPTIONS = {
    301: "The resource has moved.",
    400: "The request could not be understood.",
    403: "This folder has no index page and listings are off.",
    404: "Nothing is served at this address.",
    405: "Only GET and HEAD are served here.",
    408: "The request took too long to arrive.",
    413: "Request bodies are not accepted here.",
    414: "The request line is too long.",
    416: "The requested range is not satisfiable.",
    431: "The request's header fields are too large.",
    500: "The server failed to answer this request.",
}


def render_error(env: jinja2.Environment, status: int) -> bytes:
    """The built-in error page of a status (templates/error.html)."""
    phrase = PHRASES.get(status) or HTTPStatus(status).phrase
    return (
        env.get_template("error.html")
        .render(status=status, phrase=phrase, description=_DESCRIPTIONS.get(status))
        .encode()
    )
