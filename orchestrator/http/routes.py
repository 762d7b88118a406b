"""Routes declared once: from each declaration come the view's plumbing and its OpenAPI
operation (openapi.py).

A view is declared with ``@bp.declare(method, path, ...)`` on a ``RouteBlueprint``;
its docstring is the summary (first line) and the description (the rest). The
declaration names what the request brings (``body``: envelope key, schema,
microversion gates; ``query``; ``listing``), what the reply is (``reply``:
envelope key and schema; ``status``), the ``policy`` rule the layer checks,
the microversion the route needs (``since``) and the errors it may answer.
The plumbing runs, in this order: policy, ``since`` (404), path ``choices``
(404), body, query, listing; then it calls the view with the path arguments
and what it parsed (``body=``, ``action=``, ``page=``, query names), and
wraps what the view returns in the reply's envelope and status.

Everything is computed when the route is declared (schema instances,
version tuples, messages): a request only runs the checks its route has.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from flask import Blueprint
from flask import g
from flask import jsonify
from flask import request
from marshmallow import EXCLUDE
from marshmallow import RAISE
from marshmallow import Schema
from werkzeug.routing import BaseConverter
from werkzeug.routing import ValidationError

from orchestrator import errors
from orchestrator import policy
from orchestrator.http.body import json_body
from orchestrator.http.body import load
from orchestrator.http.query import list_params
from orchestrator.http.query import parse_bool
from orchestrator.http.responses import empty_response
from orchestrator.http.responses import list_response

# First path segments under /v3[/{project_id}] that can never be a project id.
COLLECTIONS = frozenset({"volumes", "snapshots", "backups", "os-services", "os-quota-sets",
                         "os-availability-zone", "limits", "types", "extensions",
                         "backup-gc", "backup-policies"})
NOT_FOUND = "The resource could not be found."


class ProjectConverter(BaseConverter):
    """A project id in the URL: [A-Za-z0-9_-]{1,64}, never a collection name."""

    regex = r"[A-Za-z0-9_-]{1,64}"

    def to_python(self, value: str) -> str:
        if value in COLLECTIONS:
            raise ValidationError()
        return value


def version_tuple(text: str) -> tuple[int, int]:
    """``"3.43"`` → ``(3, 43)``, comparable with an ``APIVersion``."""
    major, minor = text.split(".")
    return int(major), int(minor)


# ----------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Body:
    """A JSON request body loaded with a marshmallow schema; the view gets ``body=``."""

    schema: type[Schema]
    envelope: str | None = None        # the one key the body holds, e.g. "backup"
    gates: Mapping[str, str] = field(default_factory=dict)  # field → first version taking it
    ignored_before: Mapping[str, str] = field(default_factory=dict)  # field → first version
    strict_from: str | None = None     # unknown keys ignored below this version, refused from it
    null_is_empty: bool = False        # a null envelope value stands for {}
    not_object: str | None = "'{envelope}' must be an object."  # the 400 for a value that
    #                                    is not an object; None: the schema's own message
    siblings: tuple[str, ...] = ()     # keys clients send beside the envelope (ignored)
    check: Callable[[Any], None] | None = None  # a precondition on the value (raises 400)


@dataclass(frozen=True)
class Action:
    """One action of an action body ``{"<name>": <value>}``."""

    name: str
    body: Body | None = None           # how the value is loaded; None: any value, unused
    description: str = ""
    policy: str | None = None          # documented; checked by the backup API after its lookup


@dataclass(frozen=True)
class Actions:
    """A body naming exactly one action; the view gets ``action=`` and ``body=``."""

    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Query:
    """A query parameter handed to the view by its name (None or False when absent)."""

    name: str
    description: str
    boolean: bool = False              # parsed with query.parse_bool
    since: str | None = None           # ignored before this version
    enum: tuple[str, ...] = ()         # documented values
    policy: str | None = None          # documented; checked by the backup API after its lookup


@dataclass(frozen=True)
class Listing:
    """A list: paging, sorting, scoping and filters (query.list_params); the view gets
    ``page=`` and returns ``(rendered, items, count)``."""

    filters: tuple[str, ...]           # columns any caller may filter by (admins: any)
    name_column: str = "display_name"  # what `name` means in filters and sort keys
    name_sort_since: str | None = None
    admin_filters: tuple[str, ...] = ()  # documented filters only admins may use


@dataclass(frozen=True)
class Reply:
    """A reply body: the schema documenting it, inside ``{envelope: ...}`` when named."""

    schema: type[Schema]
    envelope: str | None = None
    many: bool = False                 # the envelope holds a list


@dataclass(frozen=True)
class Route:
    """Everything the wire says about one route."""

    method: str
    path: str                          # werkzeug rule, relative to the blueprint's prefix
    summary: str
    description: str = ""
    status: int = 200
    reply: Reply | None = None         # None: no body
    body: Body | Actions | None = None
    query: tuple[Query, ...] = ()
    listing: Listing | None = None
    policy: str | None = None          # checked before anything else
    owner: str | None = None           # path argument naming a project: the policy is only
    #                                    checked for another project's
    resource_policy: str | None = None  # documented; checked by the backup API after its lookup
    since: str | None = None           # 404 before this version
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # path arg → values
    errors: tuple[int, ...] = ()       # what the route may answer besides the usual faults
    aliases: tuple[str, ...] = ()      # further rules served by the same view
    public: bool = False               # no credentials, no microversion

    def rules(self) -> tuple[str, ...]:
        """Every werkzeug rule the route is served at."""
        return (self.path, *self.aliases)

    def policies(self) -> list[str]:
        """Every rule the route involves, checked here or after a lookup."""
        found = [self.policy, self.resource_policy, *(q.policy for q in self.query)]
        if isinstance(self.body, Actions):
            found += [a.policy for a in self.body.actions]
        return [rule for rule in found if rule]


# ----------------------------------------------------------------------------- the plumbing


def _body_loader(spec: Body) -> Callable[[Any, tuple], dict]:
    """The function that turns a parsed body into the view's ``body`` argument."""
    key, siblings, check, null_is_empty = spec.envelope, spec.siblings, spec.check, \
        spec.null_is_empty
    gates = tuple((name, version_tuple(v), f"Invalid input received: {name} is not allowed "
                   f"before microversion {v}.") for name, v in spec.gates.items())
    drops = tuple((name, version_tuple(v)) for name, v in spec.ignored_before.items())
    strict = spec.schema(unknown=RAISE) if spec.strict_from else spec.schema()
    lenient = spec.schema(unknown=EXCLUDE) if spec.strict_from else strict
    strict_from = version_tuple(spec.strict_from) if spec.strict_from else (0, 0)
    wrong_keys = f"Invalid input received: the body must hold exactly one key, '{key}'."
    not_object = spec.not_object
    if not_object is not None:
        not_object = f"Invalid input received: {not_object.format(envelope=key)}"

    def load_body(data, version) -> dict:
        if key is not None:
            for sibling in siblings:
                data.pop(sibling, None)
            value = data.get(key, ...)
            if value is ... or len(data) != 1:
                raise errors.InvalidInput(wrong_keys)
            data = value
        if data is None and null_is_empty:
            data = {}
        if check is not None:
            check(data)
        if not isinstance(data, dict):
            if not_object is not None:
                raise errors.InvalidInput(not_object)
        else:
            for name, since, message in gates:
                if name in data and version < since:
                    raise errors.InvalidInput(message)
        args = load(strict if version >= strict_from else lenient, data)
        for name, since in drops:
            if version < since:
                args.pop(name, None)
        return args

    return load_body


def _actions_loader(spec: Actions) -> Callable[[Any, tuple], dict]:
    """The function that turns an action body into the view's ``action`` and ``body``."""
    loaders = {a.name: _body_loader(a.body) if a.body else None for a in spec.actions}

    def load_action(data, version) -> dict:
        if len(data) != 1:
            raise errors.InvalidInput("Invalid input received: exactly one action is expected.")
        name, value = next(iter(data.items()))
        if name not in loaders:
            raise errors.InvalidInput(f"There is no such action: {name}")
        loader = loaders[name]
        return {"action": name, "body": loader(value, version) if loader else None}

    return load_action


def _query_reader(params: tuple[Query, ...]) -> Callable[[tuple], dict]:
    """The function that reads the declared query parameters, in declaration order."""
    specs = tuple((q.name, q.boolean, version_tuple(q.since) if q.since else (0, 0))
                  for q in params)

    def read_query(version) -> dict:
        args, out = request.args, {}
        for name, boolean, since in specs:
            value = args.get(name) if version >= since else None
            if boolean:
                value = parse_bool(name, value) if value is not None else False
            out[name] = value
        return out

    return read_query


def plumb(route: Route, view: Callable) -> Callable:
    """The Flask view function of a declared route."""
    rule, owner = route.policy, route.owner
    since = version_tuple(route.since) if route.since else None
    choices = tuple((name, frozenset(values)) for name, values in route.choices.items())
    load_body = None
    if isinstance(route.body, Actions):
        load_body = _actions_loader(route.body)
    elif route.body is not None:
        load_value = _body_loader(route.body)

        def load_body(data, version) -> dict:
            return {"body": load_value(data, version)}
    read_query = _query_reader(route.query) if route.query else None
    listing = route.listing
    if listing is not None:
        filters = set(listing.filters)
        list_args = {"user_filters": filters, "name_column": listing.name_column,
                     "name_sort_since": listing.name_sort_since}
    status, reply = route.status, route.reply
    key = reply.envelope if reply is not None else None

    def endpoint(project_id=None, **kwargs):
        version = g.api_version
        if rule is not None and owner is None:
            policy.authorize(g.context, rule)
        elif rule is not None and kwargs[owner] != g.context.project_id:
            policy.authorize(g.context, rule, {"project_id": kwargs[owner]})
        if since is not None and version < since:
            raise errors.NotFound(NOT_FOUND)
        for name, values in choices:
            if kwargs[name] not in values:
                raise errors.NotFound(NOT_FOUND)
        if load_body is not None:
            kwargs.update(load_body(json_body(), version))
        if read_query is not None:
            kwargs.update(read_query(version))
        if listing is not None:
            page = list_params(**list_args)
            rendered, items, count = view(page=page, **kwargs)
            return list_response(key, rendered, items, page["limit"], count)
        result = view(**kwargs)
        if reply is None:
            return empty_response(status)
        response = jsonify({key: result} if key is not None else result)
        if status != 200:
            response.status_code = status
        return response

    endpoint.__name__ = view.__name__
    endpoint.__doc__ = view.__doc__
    endpoint.route = route
    _check_arguments(route, view)
    return endpoint


def _check_arguments(route: Route, view: Callable) -> None:
    """A declaration and its view must agree on the view's arguments (checked at import)."""
    given = {name for rule in route.rules() for name in _rule_args(rule)} - {"project_id"}
    if isinstance(route.body, Actions):
        given |= {"action", "body"}
    elif route.body is not None:
        given.add("body")
    given |= {q.name for q in route.query}
    if route.listing is not None:
        given.add("page")
    taken = set(inspect.signature(view).parameters)
    if given != taken:
        raise TypeError(f"{route.method} {route.path}: the view {view.__name__} takes "
                        f"{sorted(taken)}, the declaration gives {sorted(given)}")
    for rule in route.policies():
        if rule not in policy.RULES:
            raise ValueError(f"{route.method} {route.path}: unknown policy rule {rule!r}")
    if route.owner is not None and route.owner not in given:
        raise ValueError(f"{route.method} {route.path}: owner {route.owner!r} is no argument")


def _rule_args(rule: str) -> list[str]:
    """The argument names of a werkzeug rule."""
    return [part.split(":")[-1] for part in rule.replace(">", "<").split("<")[1::2]]


class RouteBlueprint(Blueprint):
    """A blueprint whose views are declared with ``declare``."""

    def __init__(self, name: str, import_name: str, *, tag: str | None = None,
                 project_twin: bool = True):
        super().__init__(name, import_name)
        self.tag = tag or name            # the OpenAPI tag of its operations
        self.project_twin = project_twin  # served under /v3 and /v3/<project_id>
        self.routes: list[Route] = []

    def declare(self, method: str, path: str, **declaration):
        """Declare the decorated view's route (see ``Route``); its docstring is the summary
        and the description."""
        def decorator(view: Callable) -> Callable:
            doc = inspect.cleandoc(view.__doc__ or "")
            summary, _, description = doc.partition("\n")
            route = Route(method, path, summary.strip(), description.strip(), **declaration)
            endpoint = plumb(route, view)
            for rule in route.rules():
                self.add_url_rule(rule, view.__name__, endpoint, methods=[method])
            self.routes.append(route)
            return view
        return decorator
