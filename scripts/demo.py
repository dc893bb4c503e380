#!/usr/bin/env python3
"""`make demo`, step 2: mint real tokens through Keycloak and the bridge, and show for each its
governed claims next to the decision the bridge recorded for it.

    python scripts/demo.py      (the stack must be up: python scripts/stack.py up)

(a) alice logs in to acme-web (password grant); (b) the billing-bot service account gets a
client-credentials token; (c) research-agent exchanges alice's token (an agent acting for her);
(d) carol, terminated in the IGA but still enabled in Keycloak, tries to log in and is refused: she
reads the policy's plain text and a reference; the reference leads to the rule in the log.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keycloak.exceptions import KeycloakError

from acme_oauth import Acme, governed
from stack import BRIDGE_URL, KEYCLOAK_URL


def show(title: str, acme: Acme, token: str, admin: str) -> dict[str, Any]:
    claims = acme.claims(token)
    print(f"\n== {title}")
    print(f"   token (sub {claims['sub']}, azp {claims.get('azp')}), governed claims:")
    for name, value in governed(claims).items():
        print(f"     {name:18} {json.dumps(value)}")
    status, answer = acme.bridge("GET", f"/v1/decisions/{claims['authz_decision_id']}/explain", token=admin)
    if status != 200:
        raise SystemExit(f"   the decision {claims['authz_decision_id']} is not in the bridge's log: {status} {answer}")
    explained = answer["explanation"]
    policy = explained["policy"]
    print(
        f"   decision {explained['decision_id']} in the log: {explained['effect']} at {explained['evaluated_at']}, "
        f"policy {policy['id']} {policy['version']}, snapshot {explained['snapshot_digest'][:19]}"
    )
    for value in explained["values"]:
        for source in value["sources"]:
            rows = ", ".join(f"{r['origin']['file']}:{r['origin']['line']}" for r in source["records"]) or "-"
            print(
                f"     {value['claim']} = {json.dumps(value['value'])}  <- rule {source['rule']['id']} ({source['pass']} pass), "
                f"export rows {rows}"
            )
    return claims


def main() -> int:
    acme = Acme(KEYCLOAK_URL, BRIDGE_URL)
    admin = acme.admin_token()
    alice = acme.login("alice")
    show("(a) alice logs in to acme-web (password grant)", acme, alice["access_token"], admin)
    show("(b) billing-bot: client credentials (a service account)", acme, acme.client_credentials("billing-bot")["access_token"], admin)
    show(
        "(c) research-agent exchanges alice's token (an agent acting for a user)",
        acme,
        acme.exchange("research-agent", alice["access_token"])["access_token"],
        admin,
    )
    print("\n== (d) carol (terminated in the IGA, still enabled in Keycloak) logs in to acme-web")
    try:
        acme.login("carol")
    except KeycloakError as exc:
        body = exc.error_message.decode() if isinstance(exc.error_message, bytes) else str(exc.error_message)
        print(f"   refused by Keycloak: HTTP {exc.response_code} {body}")
        # What carol reads is the policy's plain text and a reference; support looks the reference
        # up in the decision log, where the rule and its reason are (the admin view).
        reference = re.search(r"\(reference ([^)\s]+)\)$", json.loads(body).get("error_description", ""))
        if reference is None:
            raise SystemExit("   the refusal names no decision reference") from None
        status, record = acme.bridge("GET", f"/v1/decisions/{reference.group(1)}", token=admin)
        if status != 200:
            raise SystemExit(f"   the referenced decision {reference.group(1)} is not in the bridge's log: {status} {record}") from None
        print(
            f"   decision {record['decision_id']} in the log (admin view): {record['effect']}, reasons: "
            + "; ".join(f"{r['rule']}: {r['message']}" for r in record["result"].get("reasons", []) if r["kind"] == "deny")
        )
    else:
        raise SystemExit("   carol got a token: the bridge did not deny a terminated subject")
    print(
        f"\nThe stack stays up: Keycloak {KEYCLOAK_URL} (realm acme), bridge {BRIDGE_URL}. "
        "Explain any decision with `.venv/bin/kpb explain <decision id> --log var/stack/decisions.db`; `make stop` ends it."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
