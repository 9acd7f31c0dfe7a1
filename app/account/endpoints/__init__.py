"""HTTP handlers of the account part: the flows of seed diagrams 1, 2, 3 and 5 (`flows`),
the caller's own account (`me`) and the tenant admin's (`admin`)."""

from starlette.routing import BaseRoute

from app.account.endpoints import admin, flows, me

routes: list[BaseRoute] = [*flows.routes, *me.routes, *admin.routes]
