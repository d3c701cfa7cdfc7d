"""The Secrets port on KMS and the table: a session's secret values, encrypted.

A session's secret parameter values are one JSON object, encrypted with
the stack's KMS key under the encryption context ``{"session_id": <id>}``
and kept as binary in the table item pk ``SESSION#<id>``, sk ``SECRETS``.
The table never holds a value in the clear, and the context binds the
ciphertext to its session: copied to another session's item, it does not
decrypt.

KMS encrypts at most 4096 bytes directly; a session's secrets larger than
that are refused with :class:`~engine.errors.InputTooLarge` (secrets are
passwords and tokens, not documents).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from engine.aws.dispatch import Throttled, error_line, is_throttling
from engine.aws.settings import Clients, Settings
from engine.errors import InputTooLarge

MAX_PLAINTEXT = 4096
"""KMS Encrypt's limit, in bytes of the JSON text."""
SORT_KEY = "SECRETS"


class KmsSecrets:
    """Implements the Secrets port with KMS Encrypt/Decrypt on the table's SECRETS item.

    Args:
        settings: ``table`` and ``kms_key`` (id, ARN or alias).
        clients: ``dynamodb`` and ``kms`` are used.
    """

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients

    def _key(self, session_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"SESSION#{session_id}"}, "sk": {"S": SORT_KEY}}

    def put(self, session_id: str, values: Mapping[str, Any]) -> None:
        """Keep ``values`` with those already kept for the session (new values win).

        Raises:
            InputTooLarge: the session's secrets exceed KMS's 4096 bytes.
            Throttled: KMS or DynamoDB asked to slow down.
        """
        merged = {**self.get(session_id), **values}
        text = json.dumps(merged, ensure_ascii=False).encode()
        if len(text) > MAX_PLAINTEXT:
            raise InputTooLarge(
                f"session '{session_id}': its secret parameter values take {len(text)} bytes "
                f"as JSON; at most {MAX_PLAINTEXT} are kept on AWS."
            )
        answer = _call(
            lambda: self.clients.kms.encrypt(
                KeyId=self.settings.kms_key,
                Plaintext=text,
                EncryptionContext={"session_id": session_id},
            )
        )
        item = {**self._key(session_id), "ciphertext": {"B": answer["CiphertextBlob"]}}
        _call(lambda: self.clients.dynamodb.put_item(TableName=self.settings.table, Item=item))

    def get(self, session_id: str) -> Mapping[str, Any]:
        """The session's secret values; empty when it has none.

        Raises:
            Throttled: KMS or DynamoDB asked to slow down.
        """
        answer = _call(
            lambda: self.clients.dynamodb.get_item(
                TableName=self.settings.table,
                Key=self._key(session_id),
                ConsistentRead=True,
            )
        )
        item = answer.get("Item")
        if not item:
            return {}
        plain = _call(
            lambda: self.clients.kms.decrypt(
                KeyId=self.settings.kms_key,
                CiphertextBlob=item["ciphertext"]["B"],
                EncryptionContext={"session_id": session_id},
            )
        )
        return json.loads(plain["Plaintext"])


def _call(call: Callable[[], Any]) -> Any:
    """Run a call; throttling becomes :class:`Throttled`, other errors stay AWS's."""
    try:
        return call()
    except ClientError as exc:
        if is_throttling(exc):
            raise Throttled(f"secrets: {error_line(exc)}") from exc
        raise
