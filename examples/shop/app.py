"""A tiny two-tenant shop that sends its emails with tenant-notify. An example, not a product.

* The tenant comes from the ``X-Tenant`` header; a user proves who they are with
  ``Authorization: Bearer <token>`` (the token ``POST /api/v1/users`` returns).
  Each tenant has one seeded admin, token ``<tenant>-admin-token``.
* ``POST /api/v1/users`` registers a user and sends the welcome email,
  ``POST /api/v1/orders`` places an order and sends the order confirmation.
  The endpoints are ``async def``: the database work runs in a thread, the send
  is checked inside the transaction (``notify.build``) and submitted once it has
  committed (``await notify.asubmit``), so an order rolled back for lack of
  stock sends nothing and the event loop never waits for the broker.
* tenant-notify's router is mounted under ``/api/v1``: an admin-only test email
  and notification status.

Run it (see README.md)::

    cd examples/shop
    uvicorn app:create_app --factory       # settings: notify.toml and TENANT_NOTIFY_*
"""

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tenant_notify import Notification, Notifier
from tenant_notify.contrib.fastapi import make_router

HERE = Path(__file__).resolve().parent

# The shop's own tenant table (the notifier has the tenants' email identities).
TENANTS = {"acme": {"currency": "USD"}, "globex": {"currency": "EUR"}}
SEED_PRODUCTS = [("mug", "Mug", 1200, 10), ("poster", "Poster", 2500, 1)]


# --- database -------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("tenant_id", "sku"), CheckConstraint("stock >= 0"))

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int]
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    total_cents: Mapped[int] = mapped_column(default=0)


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int]
    unit_price_cents: Mapped[int]


def _seed(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for tenant_id in TENANTS:
            if session.scalar(select(User).where(User.tenant_id == tenant_id, User.is_admin)):
                continue
            session.add(
                User(
                    tenant_id=tenant_id,
                    email=f"admin@{tenant_id}.test",
                    name="Admin",
                    token=f"{tenant_id}-admin-token",
                    is_admin=True,
                )
            )
            for sku, name, price_cents, stock in SEED_PRODUCTS:
                session.add(
                    Product(
                        tenant_id=tenant_id,
                        sku=sku,
                        name=name,
                        price_cents=price_cents,
                        stock=stock,
                    )
                )


# --- API models -----------------------------------------------------------------------


class UserIn(BaseModel):
    email: str = Field(max_length=320)
    name: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: int
    email: str
    token: str


class LineIn(BaseModel):
    sku: str
    quantity: int = Field(ge=1, le=100)


class OrderIn(BaseModel):
    lines: list[LineIn] = Field(min_length=1)


class OrderOut(BaseModel):
    id: int
    total: Decimal
    currency: str


class OutOfStockError(Exception):
    pass


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)  # 4900 -> Decimal("49.00")


# --- the application ------------------------------------------------------------------


def create_app(notifier: Notifier | None = None, database_url: str | None = None) -> FastAPI:
    """The shop. Without ``notifier``, one is built from ``TENANT_NOTIFY_*`` variables and
    ``TENANT_NOTIFY_CONFIG_FILE`` (default: ``notify.toml`` next to this file)."""
    owns_notifier = notifier is None
    if notifier is None:
        os.environ.setdefault("TENANT_NOTIFY_CONFIG_FILE", str(HERE / "notify.toml"))
        notifier = Notifier.from_env()
    notify = notifier
    url = database_url or os.environ.get("SHOP_DATABASE_URL", "sqlite:///shop.db")
    engine = create_engine(url, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    _seed(sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_notifier:
            await notify.aclose()  # lets queued emails go out before the process exits
        engine.dispose()

    def current_tenant(x_tenant: Annotated[str, Header()]) -> str:
        if x_tenant not in TENANTS:
            raise HTTPException(404, "unknown tenant")
        return x_tenant

    TenantDep = Annotated[str, Depends(current_tenant)]

    def current_user(tenant_id: TenantDep, authorization: Annotated[str, Header()] = "") -> User:
        scheme, _, token = authorization.partition(" ")
        with sessions() as session:
            user = session.scalar(
                select(User).where(User.tenant_id == tenant_id, User.token == token)
            )
        if scheme.lower() != "bearer" or user is None:
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
        return user

    UserDep = Annotated[User, Depends(current_user)]

    def require_admin(user: UserDep) -> None:
        if not user.is_admin:
            raise HTTPException(403, "admins only")

    def user_tenant(user: UserDep) -> str:
        return user.tenant_id  # notification statuses: for logged-in users of the tenant

    app = FastAPI(title="tenant-notify shop example", lifespan=lifespan)

    # The database work of each endpoint, in a thread (SQLAlchemy's sessions block). Each
    # checks its notification inside the transaction (a bad address fails the request
    # here) and returns it once the transaction has committed, for the endpoint to submit.

    def create_user(data: UserIn, tenant_id: str) -> tuple[UserOut, Notification]:
        with sessions.begin() as session:
            user = User(
                tenant_id=tenant_id,
                email=data.email,
                name=data.name,
                token=secrets.token_urlsafe(24),
            )
            session.add(user)
            session.flush()
            welcome = notify.build(
                notify.send_welcome_email,
                user_email=user.email,
                user_name=user.name,
                tenant_id=tenant_id,
            )
        return UserOut(id=user.id, email=user.email, token=user.token), welcome

    def create_order(data: OrderIn, user: User) -> tuple[OrderOut, Notification]:
        currency = TENANTS[user.tenant_id]["currency"]
        with sessions.begin() as session:
            order = Order(tenant_id=user.tenant_id, user_id=user.id)
            session.add(order)
            session.flush()
            items, taken = [], []
            for line in data.lines:
                product = session.scalar(
                    select(Product).where(
                        Product.tenant_id == user.tenant_id, Product.sku == line.sku
                    )
                )
                if product is None:
                    raise HTTPException(422, f"no product {line.sku!r}")
                session.add(
                    OrderLine(
                        order_id=order.id,
                        product_id=product.id,
                        quantity=line.quantity,
                        unit_price_cents=product.price_cents,
                    )
                )
                taken.append((product, line.quantity))
                order.total_cents += line.quantity * product.price_cents
                items.append(
                    {
                        "name": product.name,
                        "quantity": line.quantity,
                        "unit_price": str(_money(product.price_cents)),
                    }
                )
            total = _money(order.total_cents)
            confirmation = notify.build(
                notify.send_order_confirmation,
                order_id=order.id,
                customer_email=user.email,
                customer_name=user.name,
                order_total=total,
                currency=currency,
                items=items,
                tenant_id=user.tenant_id,
            )
            # Stock is taken last: running out rolls the whole order back, and the
            # confirmation built above is never submitted.
            for product, quantity in taken:
                if product.stock < quantity:
                    raise OutOfStockError(product.sku)
                product.stock -= quantity
        return OrderOut(id=order.id, total=total, currency=currency), confirmation

    @app.post("/api/v1/users", status_code=201)
    async def register(data: UserIn, tenant_id: TenantDep) -> UserOut:
        try:
            user, welcome = await run_in_threadpool(create_user, data, tenant_id)
        except IntegrityError:
            raise HTTPException(409, "that email is already registered") from None
        await notify.asubmit(welcome)  # committed: now it may go
        return user

    @app.post("/api/v1/orders", status_code=201)
    async def place_order(data: OrderIn, user: UserDep) -> OrderOut:
        try:
            order, confirmation = await run_in_threadpool(create_order, data, user)
        except OutOfStockError as err:
            raise HTTPException(409, f"out of stock: {err}") from None
        await notify.asubmit(confirmation)
        return order

    app.include_router(
        make_router(notify, admin_dependency=require_admin, tenant_dependency=user_tenant),
        prefix="/api/v1",
    )
    return app
