"""The built-in event schemas: one per Connector namespace, each accepting real-shaped data and rejecting
broken variants with an error that names the path."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from event_router.core.validation import SchemaRegistry, builtin_schema_dir
from event_router.testing import RouterProcess, example_events, free_port, post, read_jsonl, wait_for

# The 41 namespaces of the reference table (enmeshed-events.md, section 1): what Connector 7.4 raises.
CONNECTOR_7_NAMESPACES = [
    "transport.messageReceived",
    "transport.messageSent",
    "transport.messageDelivered",
    "transport.messageWasReadAtChanged",
    "transport.relationshipChanged",
    "transport.relationshipReactivationRequested",
    "transport.relationshipReactivationCompleted",
    "transport.relationshipDecomposedBySelf",
    "transport.peerToBeDeleted",
    "transport.peerDeletionCancelled",
    "transport.peerDeleted",
    "transport.peerRelationshipTemplateLoaded",
    "transport.relationshipTemplateAllocationsExhausted",
    "transport.fileOwnershipClaimed",
    "transport.fileOwnershipLocked",
    "transport.identityDeletionProcessStatusChanged",
    "transport.datawalletSynchronized",
    "consumption.attributeCreated",
    "consumption.attributeDeleted",
    "consumption.attributeSucceeded",
    "consumption.attributeForwardingDetailsChanged",
    "consumption.attributeWasViewedAtChanged",
    "consumption.ownAttributeDeletedByOwner",
    "consumption.peerRelationshipAttributeDeletedByPeer",
    "consumption.forwardedAttributeDeletedByPeer",
    "consumption.incomingRequestReceived",
    "consumption.incomingRequestStatusChanged",
    "consumption.outgoingRequestCreated",
    "consumption.outgoingRequestCreatedAndCompleted",
    "consumption.outgoingRequestFromRelationshipCreationCreatedAndCompleted",
    "consumption.outgoingRequestStatusChanged",
    "consumption.messageProcessed",
    "consumption.relationshipTemplateProcessed",
    "consumption.shareCredentialOfferRequestItemProcessedByRecipient",
    "consumption.mailReceived",
    "consumption.relationshipEvent",
    "runtime.initializing",
    "runtime.initialized",
    "runtime.modulesLoaded",
    "runtime.modulesInitialized",
    "runtime.modulesStarted",
]
# Namespaces only older Connectors raise (runtime 1.x-6.x event classes; see schemas/README.md).
LEGACY_NAMESPACES = [
    "consumption.attributeSucceded",
    "consumption.attributeUpdated",
    "consumption.sharedAttributeCopyCreated",
    "consumption.attributeListenerCreated",
    "consumption.attributeListenerTriggered",
    "consumption.outgoingRequestFromRelationshipCreationChangeCreatedAndCompleted",
    "consumption.ownSharedAttributeSucceeded",
    "consumption.peerSharedAttributeSucceeded",
    "consumption.repositoryAttributeSucceeded",
    "consumption.thirdPartyOwnedRelationshipAttributeSucceeded",
    "consumption.thirdPartyRelationshipAttributeSucceeded",
    "consumption.ownSharedAttributeDeletedByOwner",
    "consumption.peerSharedAttributeDeletedByPeer",
    "consumption.thirdPartyOwnedRelationshipAttributeDeletedByPeer",
    "consumption.thirdPartyRelationshipAttributeDeletedByPeer",
    "consumption.requestMailReceived",
    "consumption.requestReceived",
    "transport.initializing",
    "transport.initialized",
]
NAMESPACES = [*CONNECTOR_7_NAMESPACES, *LEGACY_NAMESPACES]
NO_DATA = [ns for ns in NAMESPACES if ns.startswith(("runtime.", "transport.initiali"))]


EXAMPLE_EVENTS: list[dict[str, Any]] = example_events()
EXAMPLES = {item["trigger"]: item["data"] for item in EXAMPLE_EVENTS}

PEER = "did:e:backbone.example.org:dids:c8886dfc472605bea411a6"
SELF = "did:e:backbone.example.org:dids:71d2c295ff91728b4b031d"
OTHER = "did:e:localhost:dids:48fe8f9a46ef5b775e7657"
DEVICE = "DVC7X6SVP2KGKX5KYLE0"
WHEN = "2026-08-21T08:14:58.907Z"


BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def legacy_address(did: str) -> str:
    """The pre-DID form of an address (runtime 1.x-4.x): realm `id1` and the base58 of 24 bytes."""
    number = int.from_bytes(hashlib.sha256(did.encode()).digest()[:24], "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = BASE58[rest] + digits
    return "id1" + digits.rjust(33, "1")


def before_dids(data: Any) -> Any:
    """`data` with every DID address in the pre-DID form, as Connectors before 5.0 send them."""
    text = re.sub(r"did:e:[a-z0-9.-]+:dids:[0-9a-f]{22}", lambda m: legacy_address(m.group()), json.dumps(data))
    return json.loads(text)


def changed(base: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """A deep copy of `base` with the value at `path` replaced (or added)."""
    out = copy.deepcopy(base)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


def dropped(base: Any, path: tuple[str | int, ...]) -> Any:
    """A deep copy of `base` without the key at `path`."""
    out = copy.deepcopy(base)
    target = out
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return out


def merged(base: dict[str, Any], **keys: Any) -> dict[str, Any]:
    return {**copy.deepcopy(base), **keys}


# ---- messages ---------------------------------------------------------------------------------------
MESSAGE = EXAMPLES["transport.messageReceived"]
REQUEST = EXAMPLES["consumption.incomingRequestReceived"]
STATUS_CHANGED = EXAMPLES["consumption.outgoingRequestStatusChanged"]
OUTGOING = STATUS_CHANGED["request"]
RESPONSE = OUTGOING["response"]["content"]
MESSAGE_WITH_REQUEST = merged(MESSAGE, content=REQUEST["content"])
MESSAGE_SENT = merged(
    MESSAGE,
    isOwn=True,
    createdBy=SELF,
    recipients=[{"address": PEER}],
    content={
        "@type": "ResponseWrapper",
        "requestId": "REQ31OM7PNMJD4BWBJ86",
        "requestSourceReference": "MSG7MFSEOW59Q376OB6A",
        "requestSourceType": "Message",
        "response": merged(RESPONSE, requestId="REQ31OM7PNMJD4BWBJ86"),
    },
    attachments=["FILAB12CD34EF56GH78I"],
)
MESSAGE_NOTIFICATION = merged(
    MESSAGE,
    content={
        "@type": "Notification",
        "id": "NOTK3M9Q0ZP2X7B4D1WE",
        "items": [{"@type": "PeerAttributeSucceededNotificationItem", "predecessorId": "ATTX64EPTZXQEOB0FDPT"}],
    },
)
MESSAGE_ARBITRARY = merged(MESSAGE, content={"@type": "ArbitraryMessageContent", "value": {"any": ["thing"]}})

# ---- relationships, templates, files ----------------------------------------------------------------
RELATIONSHIP = EXAMPLES["transport.relationshipChanged"]
RELATIONSHIP_ACTIVE = merged(
    RELATIONSHIP,
    status="Active",
    auditLog=[
        *RELATIONSHIP["auditLog"],
        {
            "createdAt": "2026-08-20T14:05:00.000Z",
            "createdBy": SELF,
            "createdByDevice": "DVCVG33NTUSSM0BQ1TW7",
            "reason": "AcceptanceOfCreation",
            "oldStatus": "Pending",
            "newStatus": "Active",
        },
    ],
)
RELATIONSHIP_REACTIVATION = merged(
    RELATIONSHIP_ACTIVE,
    status="Terminated",
    creationContent={"@type": "ArbitraryRelationshipCreationContent", "value": "hello"},
    auditLog=[
        *RELATIONSHIP_ACTIVE["auditLog"],
        {
            "createdAt": WHEN,
            "createdBy": SELF,
            "reason": "Termination",
            "oldStatus": "Active",
            "newStatus": "Terminated",
        },
        {
            "createdAt": WHEN,
            "createdBy": PEER,
            "reason": "ReactivationRequested",
            "oldStatus": "Terminated",
            "newStatus": "Terminated",
        },
    ],
)
RELATIONSHIP_PEER_DELETING = merged(
    RELATIONSHIP_ACTIVE, peerDeletionInfo={"deletionStatus": "ToBeDeleted", "deletionDate": "2026-09-20T00:00:00.000Z"}
)
TEMPLATE = {
    "id": "RLT1VGB7FV5QDBXWZDFZ",
    "isOwn": False,
    "createdBy": PEER,
    "createdByDevice": DEVICE,
    "createdAt": "2026-08-20T13:59:00.123Z",
    "expiresAt": "2026-09-20T13:59:00.000Z",
    "content": {
        "@type": "RelationshipTemplateContent",
        "title": "Connect with Example Corp",
        "onNewRelationship": {
            "@type": "Request",
            "items": [
                {
                    "@type": "ReadAttributeRequestItem",
                    "mustBeAccepted": True,
                    "query": {"@type": "IdentityAttributeQuery", "valueType": "GivenName"},
                },
                {
                    "@type": "RequestItemGroup",
                    "title": "Optional",
                    "items": [{"@type": "ConsentRequestItem", "mustBeAccepted": False, "consent": "Newsletter"}],
                },
            ],
        },
    },
    "reference": {
        "truncated": "VE9LSzVCOTNBWTBKN0JIMjAyNnx8",
        "url": "https://backbone.example.org/r/RLT1VGB7FV5QDBXWZDFZ#VE9LSzVCOTNBWTBKN0JIMjAyNnx8",
    },
}
TEMPLATE_OWN = merged(
    TEMPLATE,
    isOwn=True,
    createdBy=SELF,
    content={"@type": "ArbitraryRelationshipTemplateContent", "value": {"greeting": "hi"}},
    maxNumberOfAllocations=1,
    forIdentity=PEER,
    passwordProtection={"password": "1234", "passwordIsPin": True, "passwordLocationIndicator": 50},
)
FILE = {
    "id": "FILAB12CD34EF56GH78I",
    "isOwn": True,
    "filename": "invoice.pdf",
    "filesize": 48213,
    "createdAt": WHEN,
    "createdBy": SELF,
    "createdByDevice": DEVICE,
    "expiresAt": "2027-08-21T08:14:58.907Z",
    "mimetype": "application/pdf",
    "reference": {
        "truncated": "RklMQUIxMkNEMzRFRjU2R0g3OEl8fA",
        "url": "https://backbone.example.org/r/FILAB12CD34EF56GH78I",
    },
    "owner": SELF,
    "title": "Invoice 2026-08",
    "tags": ["invoice"],
    "ownershipToken": "b3duZXJzaGlwVG9rZW4",
}
IDENTITY_DELETION = {
    "id": "IDPQ2W3E4R5T6Y7U8I9O",
    "status": "Active",
    "createdAt": WHEN,
    "createdByDevice": DEVICE,
    "gracePeriodEndsAt": "2026-09-04T08:14:58.907Z",
}

# ---- requests ---------------------------------------------------------------------------------------
REQUEST_DECIDABLE = merged(REQUEST, status="ManualDecisionRequired")
REQUEST_DRAFT = {k: v for k, v in OUTGOING.items() if k not in ("source", "response")} | {"status": "Draft"}
REQUEST_FROM_RELATIONSHIP = merged(
    OUTGOING,
    source={"type": "RelationshipTemplate", "reference": "RLT1VGB7FV5QDBXWZDFZ"},
    response={
        "createdAt": WHEN,
        "content": RELATIONSHIP["creationContent"]["response"],
        "source": {"type": "Relationship", "reference": "REL1YBBHLUEC51CGTOYD"},
    },
    wasAutomaticallyDecided=True,
)

# ---- attributes -------------------------------------------------------------------------------------
OWN_IDENTITY_ATTRIBUTE = {
    "@type": "OwnIdentityAttribute",
    "id": "ATTQV91NK2V6R1B0ZD7M",
    "createdAt": WHEN,
    "content": {
        "@type": "IdentityAttribute",
        "owner": SELF,
        "value": {"@type": "EMailAddress", "value": "jana@example.org"},
        "tags": ["x:private"],
    },
    "isDefault": True,
    "numberOfForwards": 2,
}
PEER_IDENTITY_ATTRIBUTE = {
    "@type": "PeerIdentityAttribute",
    "id": "ATTX64EPTZXQEOB0FDPT",
    "createdAt": WHEN,
    "content": {"@type": "IdentityAttribute", "owner": PEER, "value": {"@type": "GivenName", "value": "Jana"}},
    "peer": PEER,
    "sourceReference": "REQ8O2DME4V5VV4I1U3O",
    "wasViewedAt": "2026-08-22T07:00:00.000Z",
}
PEER_RELATIONSHIP_ATTRIBUTE = {
    "@type": "PeerRelationshipAttribute",
    "id": "ATTDI1ILCHTO1RN75DXQ",
    "createdAt": WHEN,
    "content": {
        "@type": "RelationshipAttribute",
        "owner": PEER,
        "key": "customerNumber",
        "confidentiality": "protected",
        "isTechnical": False,
        "value": {"@type": "ProprietaryString", "title": "Customer number", "value": "K-4711"},
    },
    "peer": PEER,
    "sourceReference": "NOTK3M9Q0ZP2X7B4D1WE",
    "deletionInfo": {"deletionStatus": "DeletedByEmitter", "deletionDate": WHEN},
}
PRE7_ATTRIBUTE = {
    "id": "ATT6PRE7ABCDEFGHIJKL",
    "createdAt": WHEN,
    "parentId": "ATTQV91NK2V6R1B0ZD7M",
    "content": {"@type": "IdentityAttribute", "owner": SELF, "value": {"@type": "City", "value": "Leipzig"}},
    "shareInfo": {"peer": PEER, "requestReference": "REQ8O2DME4V5VV4I1U3O", "sourceAttribute": "ATTQV91NK2V6R1B0ZD7M"},
    "deletionInfo": {"deletionStatus": "DeletedByPeer", "deletionDate": WHEN},
}
SUCCEEDED = {
    "predecessor": merged(OWN_IDENTITY_ATTRIBUTE, succeededBy="ATTNEWSUCCESSOR12345"),
    "successor": merged(OWN_IDENTITY_ATTRIBUTE, id="ATTNEWSUCCESSOR12345", succeeds="ATTQV91NK2V6R1B0ZD7M"),
}

RELATIONSHIP_EVENT = f"consumption.relationshipEvent.{RELATIONSHIP['id']}"

# ---- events only older Connectors raise -------------------------------------------------------------
PRE7_SUCCESSION = {
    "predecessor": merged(PRE7_ATTRIBUTE, succeededBy="ATTNEWSUCCESSOR12345"),
    "successor": merged(PRE7_ATTRIBUTE, id="ATTNEWSUCCESSOR12345", succeeds="ATT6PRE7ABCDEFGHIJKL"),
}
LISTENER = {
    "id": "ATLQ2W3E4R5T6Y7U8I9O",
    "query": {"@type": "IdentityAttributeQuery", "valueType": "StreetAddress"},
    "peer": PEER,
}
REQUEST_FROM_RELATIONSHIP_CHANGE = merged(
    REQUEST_FROM_RELATIONSHIP,
    response={
        **REQUEST_FROM_RELATIONSHIP["response"],
        "source": {"type": "RelationshipChange", "reference": "RCHNNKP7VFRCT9S2DYVE"},
    },
)
MESSAGE_RUNTIME_1 = {k: v for k, v in MESSAGE.items() if k != "isOwn"} | {
    "recipients": [{"address": SELF}],
    "relationshipIds": ["REL1YBBHLUEC51CGTOYD"],
}
LEGACY_VALID: dict[str, list[Any]] = {
    **{ns: [PRE7_ATTRIBUTE] for ns in LEGACY_NAMESPACES if ns.endswith(("DeletedByOwner", "DeletedByPeer"))},
    **{
        ns: [before_dids(PRE7_ATTRIBUTE)]
        for ns in LEGACY_NAMESPACES
        if ns.endswith(("Updated", "Succeded", "CopyCreated"))
    },
    **{ns: [PRE7_SUCCESSION] for ns in LEGACY_NAMESPACES if ns.endswith("AttributeSucceeded")},
    "consumption.attributeListenerCreated": [LISTENER],
    "consumption.attributeListenerTriggered": [
        {"attributeListener": LISTENER, "attribute": PRE7_ATTRIBUTE, "request": REQUEST_DRAFT}
    ],
    "consumption.outgoingRequestFromRelationshipCreationChangeCreatedAndCompleted": [
        before_dids(REQUEST_FROM_RELATIONSHIP_CHANGE)
    ],
    "consumption.requestMailReceived": [before_dids(MESSAGE_RUNTIME_1)],
    "consumption.requestReceived": [before_dids(merged(MESSAGE_RUNTIME_1, content=REQUEST["content"]))],
}
LEGACY_INVALID: dict[str, list[tuple[Any, str, str]]] = {
    **{
        ns: [(dropped(PRE7_ATTRIBUTE, ("content",)), "data", "content")]
        for ns in LEGACY_NAMESPACES
        if ns.endswith(("Updated", "Succeded", "CopyCreated", "DeletedByOwner", "DeletedByPeer"))
    },
    **{
        ns: [(PRE7_ATTRIBUTE, "data", "predecessor")]  # one attribute instead of the pair
        for ns in LEGACY_NAMESPACES
        if ns.endswith("AttributeSucceeded")
    },
    "consumption.attributeListenerCreated": [
        (merged(LISTENER, id="ATT6PRE7ABCDEFGHIJKL"), "data.id", "does not match")
    ],
    "consumption.attributeListenerTriggered": [
        ({"attributeListener": LISTENER, "attribute": PRE7_ATTRIBUTE}, "data", "request")
    ],
    "consumption.outgoingRequestFromRelationshipCreationChangeCreatedAndCompleted": [
        (merged(REQUEST_FROM_RELATIONSHIP_CHANGE, status="Done"), "data.status", "Done")
    ],
    "consumption.requestMailReceived": [(dropped(MESSAGE_RUNTIME_1, ("createdBy",)), "data", "createdBy")],
    "consumption.requestReceived": [
        (merged(MESSAGE_RUNTIME_1, relationshipIds="x", createdAt="now"), "data.createdAt", "now")
    ],
}

# namespace -> data the schema must accept
VALID: dict[str, list[Any]] = {
    "transport.messageReceived": [MESSAGE, MESSAGE_WITH_REQUEST],
    "transport.messageSent": [MESSAGE_SENT],
    "transport.messageDelivered": [MESSAGE_NOTIFICATION],
    "transport.messageWasReadAtChanged": [merged(MESSAGE, wasReadAt=WHEN), MESSAGE_ARBITRARY],
    "transport.relationshipChanged": [RELATIONSHIP, RELATIONSHIP_ACTIVE],
    "transport.relationshipReactivationRequested": [RELATIONSHIP_REACTIVATION],
    "transport.relationshipReactivationCompleted": [merged(RELATIONSHIP_REACTIVATION, status="Active")],
    "transport.relationshipDecomposedBySelf": [{"relationshipId": "REL1YBBHLUEC51CGTOYD"}],
    "transport.peerToBeDeleted": [RELATIONSHIP_PEER_DELETING],
    "transport.peerDeletionCancelled": [RELATIONSHIP_ACTIVE],
    "transport.peerDeleted": [
        changed(RELATIONSHIP_PEER_DELETING, ("peerDeletionInfo", "deletionStatus"), "Deleted"),
    ],
    "transport.peerRelationshipTemplateLoaded": [TEMPLATE],
    "transport.relationshipTemplateAllocationsExhausted": [
        TEMPLATE_OWN,
        changed(TEMPLATE_OWN, ("passwordProtection",), {"password": "s3cret", "passwordLocationIndicator": "Email"}),
    ],
    "transport.fileOwnershipClaimed": [FILE],
    "transport.fileOwnershipLocked": [merged(FILE, ownershipIsLocked=True, isOwn=False)],
    "transport.identityDeletionProcessStatusChanged": [
        IDENTITY_DELETION,
        None,
        {"id": "IDPQ2W3E4R5T6Y7U8I9O", "status": "Cancelled"},
    ],
    "transport.datawalletSynchronized": [None, {}],
    "consumption.attributeCreated": [OWN_IDENTITY_ATTRIBUTE, PRE7_ATTRIBUTE],
    "consumption.attributeDeleted": [PEER_RELATIONSHIP_ATTRIBUTE, PRE7_ATTRIBUTE],
    "consumption.attributeSucceeded": [SUCCEEDED],
    "consumption.attributeForwardingDetailsChanged": [OWN_IDENTITY_ATTRIBUTE],
    "consumption.attributeWasViewedAtChanged": [PEER_IDENTITY_ATTRIBUTE],
    "consumption.ownAttributeDeletedByOwner": [
        merged(PEER_IDENTITY_ATTRIBUTE, deletionInfo={"deletionStatus": "ToBeDeleted", "deletionDate": WHEN})
    ],
    "consumption.peerRelationshipAttributeDeletedByPeer": [PEER_RELATIONSHIP_ATTRIBUTE],
    "consumption.forwardedAttributeDeletedByPeer": [
        merged(OWN_IDENTITY_ATTRIBUTE, deletionInfo={"deletionStatus": "DeletedByRecipient", "deletionDate": WHEN}),
        PRE7_ATTRIBUTE,
    ],
    "consumption.incomingRequestReceived": [REQUEST],
    "consumption.incomingRequestStatusChanged": [
        {"request": REQUEST_DECIDABLE, "oldStatus": "DecisionRequired", "newStatus": "ManualDecisionRequired"}
    ],
    "consumption.outgoingRequestCreated": [REQUEST_DRAFT],
    "consumption.outgoingRequestCreatedAndCompleted": [OUTGOING],
    "consumption.outgoingRequestFromRelationshipCreationCreatedAndCompleted": [REQUEST_FROM_RELATIONSHIP],
    "consumption.outgoingRequestStatusChanged": [STATUS_CHANGED],
    "consumption.messageProcessed": [
        {"message": MESSAGE, "result": "NoRequest"},
        {"message": MESSAGE_WITH_REQUEST, "result": "RequestAutomaticallyDecided"},
    ],
    "consumption.relationshipTemplateProcessed": [
        {"template": TEMPLATE, "result": "ManualRequestDecisionRequired", "requestId": "REQ8O2DME4V5VV4I1U3O"},
        {"template": TEMPLATE, "result": "RelationshipExists", "relationshipId": "REL1YBBHLUEC51CGTOYD"},
        {"template": TEMPLATE, "result": "RequestExpired"},
    ],
    "consumption.shareCredentialOfferRequestItemProcessedByRecipient": [
        {"credentialOfferUrl": "openid-credential-offer://?credential_offer_uri=x", "accepted": True, "peer": OTHER}
    ],
    "consumption.mailReceived": [MESSAGE],
    "consumption.relationshipEvent": [RELATIONSHIP],
    **{ns: [{}, None] for ns in NO_DATA},
    **LEGACY_VALID,
}

# namespace -> (broken data, the error's path, a word the error names)
INVALID: dict[str, list[tuple[Any, str, str]]] = {
    "transport.messageReceived": [
        (changed(MESSAGE, ("content", "to", 0), "x"), "data.content.to[0]", "does not match"),
        (dropped(MESSAGE, ("createdBy",)), "data", "createdBy"),
    ],
    "transport.messageSent": [
        (changed(MESSAGE, ("content", "bodyFormat"), "HTML"), "data.content.bodyFormat", "HTML"),
        (changed(MESSAGE_SENT, ("content", "requestSourceType"), "Token"), "data.content.requestSourceType", "Token"),
    ],
    "transport.messageDelivered": [
        (
            changed(MESSAGE, ("recipients", 0, "receivedByDevice"), "DVC1"),
            "data.recipients[0].receivedByDevice",
            "DVC1",
        ),
        (dropped(MESSAGE_NOTIFICATION, ("content", "id")), "data.content", "id"),
    ],
    "transport.messageWasReadAtChanged": [
        (merged(MESSAGE, wasReadAt="yesterday"), "data.wasReadAt", "yesterday"),
        (dropped(MESSAGE_ARBITRARY, ("content", "value")), "data.content", "value"),
    ],
    "transport.relationshipChanged": [
        (merged(RELATIONSHIP, status="Open"), "data.status", "Open"),
        (
            changed(RELATIONSHIP, ("creationContent", "response", "result"), "Maybe"),
            "data.creationContent.response.result",
            "Maybe",
        ),
    ],
    "transport.relationshipReactivationRequested": [
        (
            changed(RELATIONSHIP_REACTIVATION, ("auditLog", 1, "newStatus"), "Reactivating"),
            "data.auditLog[1].newStatus",
            "Reactivating",
        ),
        (changed(RELATIONSHIP_REACTIVATION, ("auditLog", 1, "reason"), ""), "data.auditLog[1].reason", "shorter"),
    ],
    "transport.relationshipReactivationCompleted": [
        (merged(RELATIONSHIP, templateId="REL1VGB7FV5QDBXWZDFZ"), "data.templateId", "REL1VGB7FV5QDBXWZDFZ"),
    ],
    "transport.relationshipDecomposedBySelf": [
        (RELATIONSHIP, "data", "relationshipId"),  # what the docs promise: a Relationship
        ({"relationshipId": "MSGNNKP7VFRCT9S2DYVE"}, "data.relationshipId", "does not match"),
    ],
    "transport.peerToBeDeleted": [
        (
            changed(RELATIONSHIP_PEER_DELETING, ("peerDeletionInfo", "deletionStatus"), "Deleting"),
            "data.peerDeletionInfo.deletionStatus",
            "Deleting",
        ),
    ],
    "transport.peerDeletionCancelled": [(dropped(RELATIONSHIP_ACTIVE, ("peerIdentity",)), "data", "peerIdentity")],
    "transport.peerDeleted": [
        (merged(RELATIONSHIP, peer="did:e:backbone.example.org:dids:XYZ"), "data.peer", "does not match"),
    ],
    "transport.peerRelationshipTemplateLoaded": [
        (
            changed(TEMPLATE, ("content", "onNewRelationship", "items", 0, "@type"), "IdentityAttributeQuery"),
            "data.content.onNewRelationship.items[0].@type",
            "IdentityAttributeQuery",
        ),
        (dropped(TEMPLATE, ("reference",)), "data", "reference"),
        (
            dropped(TEMPLATE, ("content", "onNewRelationship", "items", 0, "query")),
            "data.content.onNewRelationship.items[0]",
            "query",
        ),
    ],
    "transport.relationshipTemplateAllocationsExhausted": [
        (
            changed(TEMPLATE_OWN, ("passwordProtection", "passwordLocationIndicator"), 100),
            "data.passwordProtection.passwordLocationIndicator",
            "100",
        ),
        (merged(TEMPLATE_OWN, maxNumberOfAllocations="1"), "data.maxNumberOfAllocations", "integer"),
    ],
    "transport.fileOwnershipClaimed": [
        (dropped(FILE, ("reference",)), "data", "reference"),
        (merged(FILE, owner="FILAB12CD34EF56GH78I"), "data.owner", "does not match"),
    ],
    "transport.fileOwnershipLocked": [
        (merged(FILE, ownershipIsLocked=False), "data.ownershipIsLocked", "true was expected")
    ],
    "transport.identityDeletionProcessStatusChanged": [
        (merged(IDENTITY_DELETION, status="Deleting"), "data.status", "Deleting"),
        ("Active", "data", "Active"),
    ],
    "transport.datawalletSynchronized": [({"synced": True}, "data", "properties"), ([], "data", "[]")],
    "consumption.attributeCreated": [
        (merged(OWN_IDENTITY_ATTRIBUTE, **{"@type": "IdentityAttribute"}), "data.@type", "IdentityAttribute"),
        (dropped(OWN_IDENTITY_ATTRIBUTE, ("content",)), "data", "content"),
    ],
    "consumption.attributeDeleted": [
        # a pre-7 deletion status on a 7.x attribute
        (
            changed(PEER_RELATIONSHIP_ATTRIBUTE, ("deletionInfo", "deletionStatus"), "DeletedByOwner"),
            "data.deletionInfo.deletionStatus",
            "DeletedByOwner",
        ),
        (
            changed(PRE7_ATTRIBUTE, ("deletionInfo", "deletionStatus"), "DeletedByEmitter"),
            "data.deletionInfo.deletionStatus",
            "DeletedByEmitter",
        ),
    ],
    "consumption.attributeSucceeded": [
        (dropped(SUCCEEDED, ("successor",)), "data", "successor"),
        (OWN_IDENTITY_ATTRIBUTE, "data", "predecessor"),  # what the docs promise: a LocalAttribute
    ],
    "consumption.attributeForwardingDetailsChanged": [
        (merged(OWN_IDENTITY_ATTRIBUTE, id="ATT123"), "data.id", "ATT123")
    ],
    "consumption.attributeWasViewedAtChanged": [
        (changed(PEER_IDENTITY_ATTRIBUTE, ("content", "owner"), "jana"), "data.content.owner", "jana"),
    ],
    "consumption.ownAttributeDeletedByOwner": [
        (dropped(OWN_IDENTITY_ATTRIBUTE, ("content", "value", "@type")), "data.content.value", "@type"),
    ],
    "consumption.peerRelationshipAttributeDeletedByPeer": [
        (
            changed(PEER_RELATIONSHIP_ATTRIBUTE, ("content", "confidentiality"), "secret"),
            "data.content.confidentiality",
            "secret",
        ),
        (dropped(PEER_RELATIONSHIP_ATTRIBUTE, ("content", "key")), "data.content", "key"),
    ],
    "consumption.forwardedAttributeDeletedByPeer": [
        (dropped(PRE7_ATTRIBUTE, ("shareInfo", "peer")), "data.shareInfo", "peer"),
        (
            merged(OWN_IDENTITY_ATTRIBUTE, sourceReference="MSGNNKP7VFRCT9S2DYVE"),
            "data.sourceReference",
            "MSGNNKP7VFRCT9S2DYVE",
        ),
    ],
    "consumption.incomingRequestReceived": [
        (merged(REQUEST, status="Pending"), "data.status", "Pending"),
        (
            changed(REQUEST, ("content", "items", 0, "mustBeAccepted"), "yes"),
            "data.content.items[0].mustBeAccepted",
            "boolean",
        ),
    ],
    "consumption.incomingRequestStatusChanged": [
        ({"request": REQUEST_DECIDABLE, "oldStatus": "Open", "newStatus": "Rejected"}, "data.newStatus", "Rejected"),
    ],
    "consumption.outgoingRequestCreated": [(dropped(REQUEST_DRAFT, ("content", "@type")), "data.content", "@type")],
    "consumption.outgoingRequestCreatedAndCompleted": [
        (changed(OUTGOING, ("response", "content", "result"), "Maybe"), "data.response.content.result", "Maybe"),
    ],
    "consumption.outgoingRequestFromRelationshipCreationCreatedAndCompleted": [
        (
            changed(REQUEST_FROM_RELATIONSHIP, ("response", "source", "type"), "RelationshipTemplate"),
            "data.response.source.type",
            "RelationshipTemplate",
        ),
    ],
    "consumption.outgoingRequestStatusChanged": [
        (dropped(STATUS_CHANGED, ("oldStatus",)), "data", "oldStatus"),
        (changed(STATUS_CHANGED, ("request", "peer"), "nobody"), "data.request.peer", "nobody"),
    ],
    "consumption.messageProcessed": [
        ({"message": MESSAGE, "result": 3}, "data.result", "string"),
        ({"message": MESSAGE}, "data", "result"),
    ],
    "consumption.relationshipTemplateProcessed": [
        ({"template": TEMPLATE, "result": "ManualRequestDecisionRequired"}, "data", "requestId"),
        ({"template": TEMPLATE, "result": "RelationshipExists"}, "data", "relationshipId"),
    ],
    "consumption.shareCredentialOfferRequestItemProcessedByRecipient": [
        ({"credentialOfferUrl": "x", "accepted": "yes", "peer": OTHER}, "data.accepted", "boolean"),
    ],
    "consumption.mailReceived": [(MESSAGE_WITH_REQUEST, "data.content.@type", "Mail")],
    "consumption.relationshipEvent": [(dropped(RELATIONSHIP, ("auditLog",)), "data", "auditLog")],
    **{ns: [({"unexpected": 1}, "data", "properties"), ("started", "data", "started")] for ns in NO_DATA},
    **LEGACY_INVALID,
}


def trigger_of(namespace: str) -> str:
    """The trigger an event of this namespace arrives with (relationshipEvent carries the relationship id)."""
    return RELATIONSHIP_EVENT if namespace == "consumption.relationshipEvent" else namespace


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load([builtin_schema_dir()])


def test_one_schema_file_per_namespace() -> None:
    assert len(CONNECTOR_7_NAMESPACES) == 41 and len(LEGACY_NAMESPACES) == 19
    assert len(NAMESPACES) == len(set(NAMESPACES)) == 60
    files = {p.stem for p in builtin_schema_dir().glob("*.json")} - {"defs", "event"}
    assert files == set(NAMESPACES)
    assert set(VALID) == set(INVALID) == set(NAMESPACES)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_schema_file_metadata(namespace: str) -> None:
    schema = json.loads((builtin_schema_dir() / f"{namespace}.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://enmeshed-event-router.github.io/schemas/{namespace}.json"
    assert schema["title"]
    assert schema["description"]
    expected = f"{namespace}.*" if namespace == "consumption.relationshipEvent" else namespace
    assert schema["x-trigger"] == expected


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_accepts_valid_data(registry: SchemaRegistry, namespace: str) -> None:
    for data in VALID[namespace]:
        result = registry.validate(trigger_of(namespace), data)
        assert result.valid, (data, result.errors)
        assert result.schema is not None


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_rejects_broken_data_naming_the_path(registry: SchemaRegistry, namespace: str) -> None:
    for data, path, word in INVALID[namespace]:
        result = registry.validate(trigger_of(namespace), data)
        assert not result.valid, data
        assert any(e.startswith(f"{path}: ") and word in e for e in result.errors), (path, word, result.errors)


@pytest.mark.parametrize("item", EXAMPLE_EVENTS, ids=[item["trigger"] for item in EXAMPLE_EVENTS])
def test_reference_examples_are_valid(registry: SchemaRegistry, item: dict[str, Any]) -> None:
    assert registry.validate(item["trigger"], item["data"]).valid


def test_relationship_event_resolves_to_the_three_segment_schema(registry: SchemaRegistry) -> None:
    assert registry.schema_for(RELATIONSHIP_EVENT) == "consumption.relationshipEvent.*"
    assert registry.schema_for("consumption.relationshipEvent") is None
    assert registry.schema_for("consumption.relationshipEvent.REL1.extra") is None
    assert registry.validate(RELATIONSHIP_EVENT, RELATIONSHIP).schema == "consumption.relationshipEvent.*"


def test_modules_started_accepts_broker_and_webhook_forms(registry: SchemaRegistry) -> None:
    assert registry.validate("runtime.modulesStarted", {}).valid  # brokers: `{}`
    assert registry.validate("runtime.modulesStarted", None).valid  # webhook: no `data` key


def test_relationship_decomposed_by_self_requires_relationship_id(registry: SchemaRegistry) -> None:
    result = registry.validate("transport.relationshipDecomposedBySelf", {})
    assert result.errors == ('data: "relationshipId" is a required property',)


def test_attribute_succeeded_requires_predecessor_and_successor(registry: SchemaRegistry) -> None:
    result = registry.validate("consumption.attributeSucceeded", {})
    assert result.errors == (
        'data: "predecessor" is a required property',
        'data: "successor" is a required property',
    )


def test_extra_properties_are_allowed_on_dtos(registry: SchemaRegistry) -> None:
    newer = merged(MESSAGE, someFutureField=1, content=merged(MESSAGE["content"], **{"@context": "x", "@version": "2"}))
    assert registry.validate("transport.messageReceived", newer).valid


def test_shipped_examples_match_the_reference() -> None:
    """The test kit ships a copy of the reference examples; a changed reference must not go unnoticed."""
    from event_router.testing import EXAMPLES, REFERENCE_EXAMPLES

    if not REFERENCE_EXAMPLES.is_file():
        pytest.skip("../shared/reference is not beside this checkout")
    assert json.loads(EXAMPLES.read_text()) == json.loads(REFERENCE_EXAMPLES.read_text())


# ---- Connector versions and forward compatibility -------------------------------------------------------
# Payloads below follow the runtime's DTO definitions (nmshd/runtime `packages/runtime-types/src/dtos/**`, and
# for older Connectors the same files at the runtime version they ship); the version that introduced or
# removed each difference is in the name or comment.

PASSWORD_LOCATIONS_VALID = [
    "RecoveryKit",
    "Self",
    "Letter",
    "RegistrationLetter",
    "Email",
    "SMS",
    "Website",
    0,
    7,
    49,
    50,
    99,
]
PASSWORD_LOCATIONS_INVALID = [(100, "100"), (-1, "-1"), (7.5, "7.5"), ("Home", '"Home"'), ("7", '"7"'), (True, "true")]
TEMPLATE_EVENTS = [
    "transport.peerRelationshipTemplateLoaded",
    "transport.relationshipTemplateAllocationsExhausted",
    "consumption.relationshipTemplateProcessed",
]


def template_event(trigger: str, indicator: Any) -> tuple[Any, str]:
    """The event data carrying a password-protected template, and the path of its template in the data."""
    template = merged(TEMPLATE_OWN, passwordProtection={"password": "1234", "passwordLocationIndicator": indicator})
    if trigger == "consumption.relationshipTemplateProcessed":
        peer_template = merged(template, isOwn=False, createdBy=PEER, content=TEMPLATE["content"])
        return {"template": peer_template, "result": "NoRequest"}, "data.template"
    if trigger == "transport.peerRelationshipTemplateLoaded":
        return merged(template, isOwn=False, createdBy=PEER), "data"
    return template, "data"


@pytest.mark.parametrize("trigger", TEMPLATE_EVENTS)
@pytest.mark.parametrize("indicator", PASSWORD_LOCATIONS_VALID, ids=str)
def test_password_location_indicator_as_the_runtime_shows_it(
    registry: SchemaRegistry, trigger: str, indicator: Any
) -> None:
    """PasswordProtectionMapper: a stored 0-6 is shown by name (0 = RecoveryKit), any other 0-99 as the number."""
    data, _ = template_event(trigger, indicator)
    result = registry.validate(trigger, data)
    assert result.valid, result.errors


@pytest.mark.parametrize("trigger", TEMPLATE_EVENTS)
@pytest.mark.parametrize(("indicator", "word"), PASSWORD_LOCATIONS_INVALID, ids=str)
def test_password_location_indicator_outside_the_runtime_range_is_refused(
    registry: SchemaRegistry, trigger: str, indicator: Any, word: str
) -> None:
    data, at = template_event(trigger, indicator)
    result = registry.validate(trigger, data)
    path = f"{at}.passwordProtection.passwordLocationIndicator"
    assert any(e.startswith(f"{path}: ") and word in e for e in result.errors), result.errors


# Mail before @nmshd/content 7.1.0 (runtime 7.1.0, Connector 7.2.0): no bodyFormat; cc may be absent.
MAIL_BEFORE_7_2 = {k: v for k, v in MESSAGE["content"].items() if k not in ("bodyFormat", "cc")}
MESSAGE_BEFORE_7_2 = merged(MESSAGE, content=MAIL_BEFORE_7_2)


@pytest.mark.parametrize(
    ("trigger", "data"),
    [
        ("transport.messageReceived", MESSAGE_BEFORE_7_2),
        ("transport.messageSent", merged(MESSAGE_BEFORE_7_2, isOwn=True, createdBy=SELF)),
        ("transport.messageWasReadAtChanged", merged(MESSAGE_BEFORE_7_2, wasReadAt=WHEN)),
        ("consumption.mailReceived", MESSAGE_BEFORE_7_2),
        ("consumption.messageProcessed", {"message": MESSAGE_BEFORE_7_2, "result": "NoRequest"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_mail_without_body_format_from_connectors_before_7_2(registry: SchemaRegistry, trigger: str, data: Any) -> None:
    assert "bodyFormat" in MESSAGE["content"] and "bodyFormat" not in MAIL_BEFORE_7_2
    result = registry.validate(trigger, data)
    assert result.valid, result.errors


def test_a_malformed_mail_is_still_refused(registry: SchemaRegistry) -> None:
    assert registry.validate(
        "transport.messageReceived", dropped(MESSAGE_BEFORE_7_2, ("content", "subject"))
    ).errors == ('data.content: "subject" is a required property',)
    bad_format = changed(MESSAGE, ("content", "bodyFormat"), "Html")
    assert (
        registry.validate("transport.messageReceived", bad_format)
        .errors[0]
        .startswith('data.content.bodyFormat: "Html" is not one of')
    )


# A request item type a newer Connector may add (enmeshed adds item types in minor releases), and item types
# older Connectors send that runtime 7 removed (FreeText and RegisterAttributeListener, runtime 2.x-6.x).
FUTURE_ITEM = {
    "@type": "ShareSignatureRequestItem",
    "mustBeAccepted": True,
    "title": "Sign the contract",
    "document": {"@type": "FileReference", "id": "FILAB12CD34EF56GH78I"},
}
LEGACY_ITEMS = [
    {"@type": "FreeTextRequestItem", "mustBeAccepted": False, "freeText": "Your customer number?"},
    {
        "@type": "RegisterAttributeListenerRequestItem",
        "mustBeAccepted": True,
        "query": {"@type": "ThirdPartyRelationshipAttributeQuery", "key": "contract", "owner": "", "thirdParty": []},
    },
]
REQUEST_WITH_FUTURE_ITEMS = changed(
    REQUEST,
    ("content", "items"),
    [
        *REQUEST["content"]["items"],
        FUTURE_ITEM,
        {"@type": "RequestItemGroup", "title": "Later", "items": [FUTURE_ITEM, *LEGACY_ITEMS]},
    ],
)
FUTURE_ACCEPT = {"@type": "ShareSignatureAcceptResponseItem", "result": "Accepted", "signature": "c2ln"}


@pytest.mark.parametrize(
    ("trigger", "data"),
    [
        ("consumption.incomingRequestReceived", REQUEST_WITH_FUTURE_ITEMS),
        (
            "consumption.incomingRequestStatusChanged",
            {
                "request": merged(REQUEST_WITH_FUTURE_ITEMS, status="ManualDecisionRequired"),
                "oldStatus": "DecisionRequired",
                "newStatus": "ManualDecisionRequired",
            },
        ),
        ("transport.messageReceived", merged(MESSAGE, content=REQUEST_WITH_FUTURE_ITEMS["content"])),
        (
            "transport.peerRelationshipTemplateLoaded",
            changed(TEMPLATE, ("content", "onNewRelationship", "items"), [FUTURE_ITEM, *LEGACY_ITEMS]),
        ),
        (
            "consumption.outgoingRequestCreatedAndCompleted",
            changed(OUTGOING, ("response", "content", "items"), [*RESPONSE["items"], FUTURE_ACCEPT]),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_unknown_and_legacy_item_types_pass_with_the_common_shape(
    registry: SchemaRegistry, trigger: str, data: Any
) -> None:
    result = registry.validate(trigger, data)
    assert result.valid, result.errors


@pytest.mark.parametrize(
    ("item", "path", "word"),
    [
        ({k: v for k, v in FUTURE_ITEM.items() if k != "mustBeAccepted"}, "data.content.items[2]", "mustBeAccepted"),
        (merged(FUTURE_ITEM, mustBeAccepted="yes"), "data.content.items[2].mustBeAccepted", "boolean"),
        (merged(FUTURE_ITEM, **{"@type": "ShareSignature"}), "data.content.items[2].@type", "RequestItem$"),
        (merged(FUTURE_ITEM, **{"@type": 7}), "data.content.items[2].@type", "string"),
        # a known type keeps its own keys
        ({"@type": "ReadAttributeRequestItem", "mustBeAccepted": True}, "data.content.items[2]", "query"),
        ({"@type": "FreeTextRequestItem", "mustBeAccepted": True}, "data.content.items[2]", "freeText"),
        (
            {"@type": "DeleteAttributeRequestItem", "mustBeAccepted": True, "attributeId": "REQ31OM7PNMJD4BWBJ86"},
            "data.content.items[2].attributeId",
            "does not match",
        ),
    ],
    ids=str,
)
def test_malformed_request_items_are_still_refused(registry: SchemaRegistry, item: Any, path: str, word: str) -> None:
    data = changed(REQUEST, ("content", "items"), [*REQUEST["content"]["items"], item])
    result = registry.validate("consumption.incomingRequestReceived", data)
    assert any(e.startswith(f"{path}: ") and word in e for e in result.errors), result.errors


def test_open_type_fields_accept_a_newer_connectors_values(registry: SchemaRegistry) -> None:
    future_content = merged(MESSAGE, content={"@type": "Announcement", "title": "Maintenance"})
    assert registry.validate("transport.messageReceived", future_content).valid
    assert registry.validate("transport.messageReceived", changed(MESSAGE, ("content", "@type"), "")).errors[0] == (
        'data.content.@type: "" is shorter than 1 character'
    )
    future_notification = changed(MESSAGE_NOTIFICATION, ("content", "items", 0, "@type"), "FutureNotificationItem")
    assert registry.validate("transport.messageReceived", future_notification).valid
    future_creation = changed(RELATIONSHIP, ("creationContent",), {"@type": "SignedRelationshipCreationContent"})
    assert registry.validate("transport.relationshipChanged", future_creation).valid
    future_template = changed(TEMPLATE, ("content",), {"@type": "GroupRelationshipTemplateContent", "group": "x"})
    assert registry.validate("transport.peerRelationshipTemplateLoaded", future_template).valid
    future_reason = changed(RELATIONSHIP_REACTIVATION, ("auditLog", 3, "reason"), "ReactivationDueToRecovery")
    assert registry.validate("transport.relationshipReactivationRequested", future_reason).valid
    future_results = [
        ("consumption.messageProcessed", {"message": MESSAGE, "result": "RequestForwarded"}),
        ("consumption.relationshipTemplateProcessed", {"template": TEMPLATE, "result": "TemplateRevoked"}),
    ]
    for trigger, data in future_results:
        assert registry.validate(trigger, data).valid, trigger


def test_closed_value_sets_still_refuse_unknown_values(registry: SchemaRegistry) -> None:
    """State enums changed only with a major release: an unknown value is a broken event, not a newer one."""
    cases = [
        ("transport.relationshipChanged", merged(RELATIONSHIP, status="Paused"), "data.status"),
        ("consumption.incomingRequestReceived", merged(REQUEST, status="Archived"), "data.status"),
        ("transport.identityDeletionProcessStatusChanged", merged(IDENTITY_DELETION, status="Paused"), "data.status"),
        (
            "consumption.attributeCreated",
            merged(OWN_IDENTITY_ATTRIBUTE, **{"@type": "SharedIdentityAttribute"}),
            "data.@type",
        ),
        (
            "consumption.outgoingRequestCreatedAndCompleted",
            changed(OUTGOING, ("response", "content", "result"), "Partial"),
            "data.response.content.result",
        ),
    ]
    for trigger, data, path in cases:
        errors = registry.validate(trigger, data).errors
        assert any(e.startswith(f"{path}: ") and "is not one of" in e for e in errors), (trigger, errors)


# ---- older Connectors: what the DTOs looked like in each supported generation ---------------------------
# Runtime 5.x-6.x (Connector 5 and 6): the relationship carries the whole template (runtime 7.0 replaced it by
# templateId); peerDeletionInfo before runtime 6.2 had no deletionDate; templates carry truncatedReference
# (removed in 7.0) and, before runtime 6.44, no reference; files (events since 6.52) before 6.63.5 have no owner;
# identity deletion processes before 7.0 have the statuses WaitingForApproval/Rejected/Approved/Cancelled.
TEMPLATE_6 = merged(TEMPLATE, truncatedReference="UkxUMVZHQjdGVjVRREJYV1pERlp8fFZFOUxTelZDT1RO")
TEMPLATE_BEFORE_6_44 = {k: v for k, v in TEMPLATE_6.items() if k != "reference"}
RELATIONSHIP_6 = {k: v for k, v in RELATIONSHIP_PEER_DELETING.items() if k != "templateId"} | {
    "template": merged(TEMPLATE_6, isOwn=True, createdBy=SELF),
    "peerDeletionInfo": {"deletionStatus": "ToBeDeleted"},
}
FILE_6 = merged({k: v for k, v in FILE.items() if k != "owner"}, truncatedReference="RklMQUIxMkNEMzRFRjU2R0g3OEl8fA")
IDENTITY_DELETION_6 = {
    "id": "IDPQ2W3E4R5T6Y7U8I9O",
    "status": "Approved",
    "createdAt": WHEN,
    "approvedAt": WHEN,
    "approvedByDevice": DEVICE,
    "gracePeriodEndsAt": "2026-09-04T08:14:58.907Z",
}

# Runtime 2.x-4.x (Connector 3.x and 4.x): addresses are `<realm><base58>`, not DIDs; relationships have
# `template` and `changes` (no creation content or audit log) and the status Terminating; message and template
# content is any JSON; a request's response can come from a RelationshipChange; runtime 2.0 (Connector 3.0) has
# no `isOwn` on messages.
CHANGE_PART = {"createdBy": PEER, "createdByDevice": DEVICE, "createdAt": WHEN}
RELATIONSHIP_4 = before_dids(
    {
        "id": "REL1YBBHLUEC51CGTOYD",
        "template": merged(TEMPLATE_BEFORE_6_44, isOwn=True, createdBy=SELF, content={"greeting": "untyped"}),
        "status": "Terminating",
        "peer": PEER,
        "peerIdentity": RELATIONSHIP["peerIdentity"],
        "changes": [
            {
                "id": "RCHNNKP7VFRCT9S2DYVE",
                "request": {**CHANGE_PART, "content": {"@type": "RelationshipCreationChangeRequestContent"}},
                "response": {**CHANGE_PART, "createdBy": SELF},
                "status": "Accepted",
                "type": "Creation",
            },
            {"id": "RCHA8HFPDTVHGX0C4RSA", "request": CHANGE_PART, "status": "Pending", "type": "Termination"},
        ],
    }
)
MESSAGE_3_0 = before_dids(
    {k: v for k, v in MESSAGE.items() if k != "isOwn"} | {"content": {"orderId": 4711, "state": "shipped"}}
)
REQUEST_FROM_CHANGE = before_dids(
    changed(
        REQUEST_FROM_RELATIONSHIP,
        ("response", "source"),
        {"type": "RelationshipChange", "reference": "RCHNNKP7VFRCT9S2DYVE"},
    )
)

# Runtime 1.x (Connector 2.3 to 2.x, webhooksV2): as 2.x-4.x, but templates have no reference at all, messages
# list `relationshipIds` and recipients have no `relationshipId`.
RELATIONSHIP_1 = before_dids(
    merged(
        RELATIONSHIP_4,
        template={k: v for k, v in RELATIONSHIP_4["template"].items() if k != "truncatedReference"},
        status="Active",
        peerIdentity={**RELATIONSHIP["peerIdentity"], "realm": "id1"},
        lastMessageReceivedAt=WHEN,
    )
)
MESSAGE_1 = before_dids(
    merged(
        MESSAGE_3_0,
        recipients=[{"address": SELF, "receivedAt": WHEN}],
        relationshipIds=["REL1YBBHLUEC51CGTOYD"],
        content={k: v for k, v in MESSAGE["content"].items() if k not in ("bodyFormat", "cc")},
    )
)

OLDER_CONNECTORS: list[tuple[str, str, Any]] = [
    ("6.x", "transport.relationshipChanged", RELATIONSHIP_6),
    ("6.x", "transport.peerToBeDeleted", RELATIONSHIP_6),
    ("6.x", "transport.peerRelationshipTemplateLoaded", TEMPLATE_6),
    ("6.x", "consumption.relationshipTemplateProcessed", {"template": TEMPLATE_6, "result": "NoRequest"}),
    ("6.x", "transport.fileOwnershipClaimed", FILE_6),
    ("6.x", "transport.identityDeletionProcessStatusChanged", IDENTITY_DELETION_6),
    ("6.x", "transport.identityDeletionProcessStatusChanged", merged(IDENTITY_DELETION_6, status="WaitingForApproval")),
    ("6.x", "consumption.attributeCreated", PRE7_ATTRIBUTE),
    ("before 6.26", "transport.peerRelationshipTemplateLoaded", TEMPLATE_BEFORE_6_44),
    ("3.x-4.x", "transport.relationshipChanged", RELATIONSHIP_4),
    ("3.x-4.x", "consumption.relationshipEvent", RELATIONSHIP_4),
    ("3.x-4.x", "transport.messageReceived", merged(MESSAGE_3_0, isOwn=False)),
    (
        "3.x-4.x",
        "transport.peerRelationshipTemplateLoaded",
        before_dids(merged(TEMPLATE_BEFORE_6_44, content={"title": "hello", "anything": [1]})),
    ),
    ("3.x-4.x", "consumption.outgoingRequestCreatedAndCompleted", REQUEST_FROM_CHANGE),
    ("3.0", "transport.messageReceived", MESSAGE_3_0),
    ("3.0", "consumption.messageProcessed", {"message": MESSAGE_3_0, "result": "NoRequest"}),
    ("2.3", "transport.relationshipChanged", RELATIONSHIP_1),
    ("2.3", "transport.messageReceived", MESSAGE_1),
    ("2.3", "consumption.mailReceived", MESSAGE_1),
]


@pytest.mark.parametrize(
    ("connector", "namespace", "data"), OLDER_CONNECTORS, ids=[f"{c}-{n}" for c, n, _ in OLDER_CONNECTORS]
)
def test_older_connectors_events_are_valid(registry: SchemaRegistry, connector: str, namespace: str, data: Any) -> None:
    result = registry.validate(trigger_of(namespace), data)
    assert result.valid, (connector, result.errors)


@pytest.mark.parametrize(
    ("namespace", "data", "error"),
    [
        # neither templateId (7.x) nor template (before 7)
        (
            "transport.relationshipChanged",
            {k: v for k, v in RELATIONSHIP.items() if k != "templateId"},
            'data: "templateId" is a required property',
        ),
        # the 3.x-4.x model needs its template
        (
            "transport.relationshipChanged",
            {k: v for k, v in RELATIONSHIP_4.items() if k != "template"},
            'data: "template" is a required property',
        ),
        (
            "transport.relationshipChanged",
            changed(RELATIONSHIP_4, ("changes", 1, "type"), "Reactivation"),
            'data.changes[1].type: "Reactivation" is not one of',
        ),
        (
            "transport.relationshipChanged",
            changed(RELATIONSHIP_6, ("template", "id"), "REL1YBBHLUEC51CGTOYD"),
            'data.template.id: "REL1YBBHLUEC51CGTOYD" does not match',
        ),
        # a template with neither reference (6.44+) nor truncatedReference (before 7.0)
        (
            "transport.peerRelationshipTemplateLoaded",
            {k: v for k, v in TEMPLATE_BEFORE_6_44.items() if k != "truncatedReference"},
            'data: "reference" is a required property',
        ),
        (
            "consumption.outgoingRequestCreatedAndCompleted",
            changed(REQUEST_FROM_CHANGE, ("response", "source", "reference"), "RLT1VGB7FV5QDBXWZDFZ"),
            'data.response.source.reference: "RLT1VGB7FV5QDBXWZDFZ" does not match',
        ),
        ("transport.messageReceived", merged(MESSAGE_3_0, content="shipped"), 'data.content: "shipped" is not of type'),
        # pre-DID addresses: a 3-character realm and 32 or 33 base58 characters (no 0, O, I or l)
        ("transport.messageReceived", merged(MESSAGE_3_0, createdBy="id1PNvUP4jHD74qo6usnWNoaFGF"), "data.createdBy: "),
        (
            "transport.messageReceived",
            merged(MESSAGE_3_0, createdBy="id1PNvUP4jHD74qo6usnWNoaFGFf33MXZi60"),
            'data.createdBy: "id1PNvUP4jHD74qo6usnWNoaFGFf33MXZi60" does not match',
        ),
    ],
    ids=str,
)
def test_older_connectors_malformed_events_are_still_refused(
    registry: SchemaRegistry, namespace: str, data: Any, error: str
) -> None:
    errors = registry.validate(trigger_of(namespace), data).errors
    assert any(e.startswith(error) for e in errors), errors


# ---- every value of the runtime's closed value sets -------------------------------------------------------
# Read in nmshd/runtime at every release tag from 5.0.2 to 7.5.12 (commit 55705c66) and at runtime 4.14.4,
# nmshd/runtime-monorepo (runtime 3.4) and nmshd/cns-content (2.0); the file defining each set is named above
# it. Each value must validate where the runtime puts it, in every event that carries it.

# content/src/requests/response/ResponseItemResult.ts: the member `Failed` is serialised as "Error" (unchanged
# since cns-content 2.0); ErrorResponseItem.ts carries it with `code` and `message`. The runtime's own request
# schema (runtime/src/useCases/common/Schemas.ts, ErrorResponseItemJSON) has `"const": "Error"`.
RESPONSE_ITEM_RESULTS = ["Accepted", "Rejected", "Error"]
ERROR_ITEM = {
    "@type": "ErrorResponseItem",
    "result": "Error",
    "code": "error.app.attributeCouldNotBeRead",
    "message": "The attribute could not be read.",
}
RESPONSE_ITEM_BY_RESULT = {
    "Accepted": {"@type": "AcceptResponseItem", "result": "Accepted"},
    "Rejected": {"@type": "RejectResponseItem", "result": "Rejected", "code": "x:declined"},
    "Error": ERROR_ITEM,
}


def responses_carrying(item: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every event that carries a Response, its items being `item` alone and `item` in a group."""
    events: list[tuple[str, Any]] = []
    for items in ([item], [{"@type": "ResponseItemGroup", "items": [item]}]):
        response = merged(RESPONSE, items=items)
        completed = changed(OUTGOING, ("response", "content"), response)
        wrapper = changed(MESSAGE_SENT, ("content", "response"), merged(response, requestId="REQ31OM7PNMJD4BWBJ86"))
        events += [
            ("consumption.outgoingRequestStatusChanged", merged(STATUS_CHANGED, request=completed)),
            ("consumption.outgoingRequestCreatedAndCompleted", completed),
            ("transport.messageSent", wrapper),
            (
                "transport.messageReceived",
                merged(wrapper, isOwn=False, createdBy=PEER, recipients=MESSAGE["recipients"]),
            ),
            ("consumption.messageProcessed", {"message": wrapper, "result": "NoRequest"}),
            ("transport.relationshipChanged", changed(RELATIONSHIP, ("creationContent", "response"), response)),
            (
                "consumption.outgoingRequestCreatedAndCompleted",
                before_dids(changed(REQUEST_FROM_CHANGE, ("response", "content"), response)),
            ),
        ]
    return events


@pytest.mark.parametrize("result", RESPONSE_ITEM_RESULTS)
def test_every_response_item_result_of_the_runtime_validates(registry: SchemaRegistry, result: str) -> None:
    for trigger, data in responses_carrying(RESPONSE_ITEM_BY_RESULT[result]):
        outcome = registry.validate(trigger, data)
        assert outcome.valid, (trigger, outcome.errors)


def test_failed_is_the_enum_members_name_not_a_result(registry: SchemaRegistry) -> None:
    """The docs and the OpenAPI spec list `Failed`, the member's name; no runtime sends it."""
    for trigger, data in responses_carrying(merged(ERROR_ITEM, result="Failed")):
        errors = registry.validate(trigger, data).errors
        assert any(e.endswith('.result: "Failed" is not one of "Accepted", "Rejected" or "Error"') for e in errors), (
            trigger,
            errors,
        )


# Runtime 7.x: consumption/src/modules/attributes/local/deletionInfos/EmittedAttributeDeletionInfo.ts (on own
# relationship attributes) and ReceivedAttributeDeletionInfo.ts (on peer and third-party attributes); the DTO
# (runtime-types/src/dtos/consumption/LocalAttributeDeletionInfoDTO.ts) is their union, and the runtime's
# AttributeMapper gives deletionInfo only to those four types. Unchanged from 7.0.0 to 7.5.12; a 6.x database
# is not carried into 7.x (the migration guide has it deleted), so no 7.x attribute keeps a pre-7 status.
EMITTED_DELETION_STATUSES = [
    "DeletionRequestSent",
    "DeletionRequestRejected",
    "ToBeDeletedByRecipient",
    "DeletedByRecipient",
]
RECEIVED_DELETION_STATUSES = ["ToBeDeleted", "DeletedByEmitter"]
# Runtime 4.x-6.x: consumption/src/modules/attributes/local/LocalAttributeDeletionInfo.ts (DeletionStatus in 4.x)
PRE7_DELETION_STATUSES = [
    "DeletionRequestSent",
    "DeletionRequestRejected",
    "ToBeDeleted",
    "ToBeDeletedByPeer",
    "DeletedByPeer",
    "DeletedByOwner",
]
OWN_RELATIONSHIP_ATTRIBUTE = merged(
    changed(PEER_RELATIONSHIP_ATTRIBUTE, ("content", "owner"), SELF),
    **{"@type": "OwnRelationshipAttribute"},
    numberOfForwards=0,
)
THIRD_PARTY_ATTRIBUTE = merged(
    changed(PEER_RELATIONSHIP_ATTRIBUTE, ("content", "owner"), OTHER),
    **{"@type": "ThirdPartyRelationshipAttribute"},
    initialAttributePeer=OTHER,
)
DELETION_CASES: list[tuple[str, dict[str, Any], str]] = [
    *(("7.x", OWN_RELATIONSHIP_ATTRIBUTE, status) for status in EMITTED_DELETION_STATUSES),
    *(
        ("7.x", attribute, status)
        for attribute in (PEER_IDENTITY_ATTRIBUTE, PEER_RELATIONSHIP_ATTRIBUTE, THIRD_PARTY_ATTRIBUTE)
        for status in RECEIVED_DELETION_STATUSES
    ),
    *(("6.x", PRE7_ATTRIBUTE, status) for status in PRE7_DELETION_STATUSES),
]
# the namespaces whose data is one LocalAttributeDTO, and the succession of each generation
ATTRIBUTE_NAMESPACES = {
    "7.x": [
        "consumption.attributeCreated",
        "consumption.attributeDeleted",
        "consumption.attributeForwardingDetailsChanged",
        "consumption.attributeWasViewedAtChanged",
        "consumption.ownAttributeDeletedByOwner",
        "consumption.peerRelationshipAttributeDeletedByPeer",
        "consumption.forwardedAttributeDeletedByPeer",
    ],
    "6.x": [
        "consumption.attributeCreated",
        "consumption.attributeDeleted",
        *(ns for ns in LEGACY_NAMESPACES if ns.endswith(("DeletedByOwner", "DeletedByPeer"))),
    ],
}
SUCCESSION = {"7.x": "consumption.attributeSucceeded", "6.x": "consumption.peerSharedAttributeSucceeded"}


@pytest.mark.parametrize(
    ("generation", "attribute", "status"),
    DELETION_CASES,
    ids=[f"{g}-{a.get('@type', 'pre7')}-{s}" for g, a, s in DELETION_CASES],
)
def test_every_deletion_status_of_the_runtime_validates(
    registry: SchemaRegistry, generation: str, attribute: dict[str, Any], status: str
) -> None:
    deleted = merged(attribute, deletionInfo={"deletionStatus": status, "deletionDate": WHEN})
    alive = {k: v for k, v in attribute.items() if k != "deletionInfo"}
    successor = merged(alive, id="ATTNEWSUCCESSOR12345", succeeds=attribute["id"])
    events = [(ns, deleted) for ns in ATTRIBUTE_NAMESPACES[generation]]
    events.append(
        (SUCCESSION[generation], {"predecessor": merged(deleted, succeededBy=successor["id"]), "successor": successor})
    )
    for trigger, data in events:
        outcome = registry.validate(trigger, data)
        assert outcome.valid, (trigger, outcome.errors)


def policy_table() -> dict[str, str]:
    """README's forward-compatibility table: `defs.json` pointer -> open/closed."""
    readme = (builtin_schema_dir() / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Za-z0-9@/]+)` \| (open|closed) \|", readme, flags=re.MULTILINE)
    return dict(rows)


def resolve(defs: dict[str, Any], pointer: str) -> Any:
    node: Any = defs
    for part in pointer.split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def enum_pointers(node: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every `enum` in defs.json outside an `if` (a discriminator test, not a value set)."""
    found: list[str] = []
    if isinstance(node, dict):
        if "enum" in node:
            found.append("/".join(path))
        for key, value in node.items():
            if key != "if":
                found += enum_pointers(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += enum_pointers(value, (*path, str(i)))
    return found


def test_readme_policy_table_is_what_the_schemas_do() -> None:
    defs = json.loads((builtin_schema_dir() / "defs.json").read_text())["$defs"]
    table = policy_table()
    assert len(table) >= 20
    for pointer, policy in table.items():
        node = resolve(defs, pointer)
        if policy == "open":
            assert "enum" not in node and "const" not in node, pointer
            assert node.get("type") == "string" or node.get("$ref") == "#/$defs/TypedObject", pointer
        else:
            assert "enum" in node or any("enum" in branch for branch in node.get("anyOf", [])), pointer
    closed = {p for p, policy in table.items() if policy == "closed"}
    for pointer in enum_pointers(defs):
        assert pointer in closed or pointer.rsplit("/anyOf/", 1)[0] in closed, f"{pointer}: not in the README table"


@pytest.mark.slow
def test_a_strict_router_routes_every_connector_generation(tmp_path: Path) -> None:
    """The events above, POSTed as the Connector's webhooks module does, to a router that dead-letters invalid
    events and triggers without a schema."""
    port = free_port()
    config = tmp_path / "router.toml"
    config.write_text(f"""
[router]
data_dir = "./var"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
validation = "strict"
unknown_triggers = "dead-letter"
[outputs.archive]
type = "file"
path = "./out.jsonl"
[[routes]]
name = "all"
to = ["archive"]
""")
    accepted: list[tuple[str, Any]] = [
        ("transport.peerRelationshipTemplateLoaded", template_event("transport.peerRelationshipTemplateLoaded", 0)[0]),
        ("transport.relationshipTemplateAllocationsExhausted", template_event("x", "RecoveryKit")[0]),
        (
            "consumption.relationshipTemplateProcessed",
            template_event("consumption.relationshipTemplateProcessed", 7)[0],
        ),
        ("transport.messageReceived", MESSAGE_BEFORE_7_2),
        ("consumption.incomingRequestReceived", REQUEST_WITH_FUTURE_ITEMS),
        responses_carrying(ERROR_ITEM)[0],
        *((trigger_of(namespace), data) for _, namespace, data in OLDER_CONNECTORS),
        *((namespace, data[0]) for namespace, data in LEGACY_VALID.items()),
    ]
    url = f"http://127.0.0.1:{port}/events"
    with RouterProcess(config) as router:
        for trigger, data in accepted:
            status, body, _ = post(url, {"trigger": trigger, "data": data})
            assert (status, body.get("status")) == (202, "accepted"), (trigger, body)
        broken = template_event("transport.peerRelationshipTemplateLoaded", 100)[0]
        status, body, _ = post(url, {"trigger": "transport.peerRelationshipTemplateLoaded", "data": broken})
        assert (status, body["status"]) == (422, "dead_lettered")
        assert body["errors"][0].startswith("data.passwordProtection.passwordLocationIndicator: 100 is not valid")
        lines = wait_for(
            lambda: len(read_jsonl(tmp_path / "out.jsonl")) == len(accepted) and read_jsonl(tmp_path / "out.jsonl")
        )
        assert [line["trigger"] for line in lines] == [trigger for trigger, _ in accepted]
        router.terminate()
