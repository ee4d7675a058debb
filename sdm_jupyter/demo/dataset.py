"""The demo's sample shop: customers, products, orders and order items (tens of thousands of rows,
deterministic), and three database logins with generated passwords:

* ``shop_admin``    superuser
* ``shop_readonly`` may read every table
* ``shop_orders``   restricted: may read ``orders`` and ``order_items`` only (no customer PII)
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from .postgres import EmbeddedPostgres, Login, new_password

DATABASE = "shop"
COUNTS = {"customers": 5_000, "products": 400, "orders": 30_000}
_COUNTRIES = ["DE", "FR", "US", "GB", "JP", "BR", "IN", "NG", "AU", "CA", "ES", "IT"]
_FIRST = ["Ada", "Alan", "Grace", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Frances", "Edsger",
          "Radia", "Tim", "Hedy", "Claude", "Katherine", "John", "Sophie", "Guido", "Yukihiro", "Anita"]
_LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Ritchie", "Liskov", "Thompson", "Allen",
         "Dijkstra", "Perlman", "Berners-Lee", "Lamarr", "Shannon", "Johnson", "McCarthy", "Wilson", "Rossum",
         "Matsumoto", "Borg"]
_CATEGORIES = {"books": (5, 60), "games": (10, 80), "garden": (3, 250), "kitchen": (4, 180),
               "outdoor": (8, 400), "office": (1, 120), "toys": (3, 90), "audio": (15, 600)}
_STATUSES = ["delivered"] * 8 + ["shipped", "cancelled", "returned"]

LOGIN_NAMES = {"superuser": "shop_admin", "read-only": "shop_readonly", "restricted": "shop_orders"}


def logins() -> dict[str, Login]:
    return {key: Login(name, new_password()) for key, name in LOGIN_NAMES.items()}


def _rows(seed: int = 7):
    rnd = random.Random(seed)
    start = dt.datetime(2024, 1, 1)
    customers = []
    for i in range(1, COUNTS["customers"] + 1):
        first, last = rnd.choice(_FIRST), rnd.choice(_LAST)
        customers.append((i, f"{first} {last}", f"{first.lower()}.{last.lower()}{i}@example.com",
                          rnd.choice(_COUNTRIES), start - dt.timedelta(days=rnd.randint(0, 900))))
    products = []
    for i in range(1, COUNTS["products"] + 1):
        category = rnd.choice(list(_CATEGORIES))
        low, high = _CATEGORIES[category]
        products.append((i, f"{category.title()} item {i:03d}", category,
                         Decimal(rnd.randint(low * 100, high * 100)) / 100))
    orders, items = [], []
    item_id = 0
    for i in range(1, COUNTS["orders"] + 1):
        placed = start + dt.timedelta(minutes=rnd.randint(0, 365 * 24 * 60))
        orders.append((i, rnd.randint(1, COUNTS["customers"]), placed, rnd.choice(_STATUSES)))
        for _ in range(rnd.choice([1, 1, 2, 2, 3, 4])):
            item_id += 1
            product = products[rnd.randrange(len(products))]
            items.append((item_id, i, product[0], rnd.randint(1, 5), product[3]))
    return customers, products, orders, items


SCHEMA = """
CREATE TABLE customers (
    id integer PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
    country char(2) NOT NULL, signed_up_at timestamp NOT NULL);
CREATE TABLE products (
    id integer PRIMARY KEY, name text NOT NULL, category text NOT NULL, price numeric(10, 2) NOT NULL);
CREATE TABLE orders (
    id integer PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers (id),
    placed_at timestamp NOT NULL, status text NOT NULL);
CREATE TABLE order_items (
    id integer PRIMARY KEY, order_id integer NOT NULL REFERENCES orders (id),
    product_id integer NOT NULL REFERENCES products (id), quantity integer NOT NULL,
    unit_price numeric(10, 2) NOT NULL);
CREATE INDEX ON orders (customer_id);
CREATE INDEX ON order_items (order_id);
"""


def seed(pg: EmbeddedPostgres, accounts: dict[str, Login]) -> dict[str, int]:
    """Create the database, its tables and rows, and the three logins. Returns row counts."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(**pg.superuser_conninfo(), autocommit=True) as conn:
        su, ro, rs = (sql.Identifier(accounts[k].username) for k in ("superuser", "read-only", "restricted"))
        pw = {k: sql.Literal(v.password) for k, v in accounts.items()}
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(su, pw["superuser"]))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ro, pw["read-only"]))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(rs, pw["restricted"]))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    customers, products, orders, items = _rows()
    with psycopg.connect(**pg.superuser_conninfo(DATABASE)) as conn:
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            for table, columns, rows in (
                    ("customers", "id, name, email, country, signed_up_at", customers),
                    ("products", "id, name, category, price", products),
                    ("orders", "id, customer_id, placed_at, status", orders),
                    ("order_items", "id, order_id, product_id, quantity, unit_price", items)):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(ro, rs))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ro))
        conn.execute(sql.SQL("GRANT SELECT ON orders, order_items TO {}").format(rs))
        conn.execute("ANALYZE")
    return {"customers": len(customers), "products": len(products), "orders": len(orders),
            "order_items": len(items)}
