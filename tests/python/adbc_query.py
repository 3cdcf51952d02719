"""Runs SQL against a Flight SQL server through ADBC (adbc_driver_flightsql + pyarrow).

Usage: adbc_query.py URI QUERY_FILE [PARAM]

Prints the answer's rows, one per line, fields separated by tabs (NULL as nothing). With
PARAM, the query is run as a prepared statement with that one integer bound to its `?`.

The server's token comes in MANTA_TOKEN: sent as an `authorization: Bearer` header, or, with
ADBC_LOGIN=1, as the password of a handshake (user and password, as a BI tool would).
"""

import os
import sys

import adbc_driver_flightsql.dbapi as flight_sql


def main() -> None:
    uri, query_file = sys.argv[1], sys.argv[2]
    params = (int(sys.argv[3]),) if len(sys.argv) > 3 else None
    with open(query_file) as f:
        query = f.read()
    token = os.environ["MANTA_TOKEN"]
    if os.environ.get("ADBC_LOGIN") == "1":
        db_kwargs = {"username": "manta", "password": token}
    else:
        db_kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {token}"}
    with flight_sql.connect(uri, db_kwargs=db_kwargs) as conn, conn.cursor() as cursor:
        cursor.execute(query, params)
        table = cursor.fetch_arrow_table()
    for row in table.to_pylist():
        print("\t".join("" if v is None else str(v) for v in row.values()))


if __name__ == "__main__":
    main()
