"""HTTP handlers of the account part: the flows of seed diagrams 1, 2, 3 and 5 (`flows`),
the caller's own account (`me`), the tenant admin's (`admin`) and the Auth0 Log Streams
webhook (`hooks`)."""

from starlette.routing import BaseRoute

from app.account.endpoints import admin, flows, hooks, me

routes: list[BaseRoute] = [*flows.routes, *me.routes, *admin.routes, *hooks.routes]
