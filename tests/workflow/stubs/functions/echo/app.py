"""A Lambda handler for the local-stack machinery tests."""

import os


class StubFailure(Exception):
    """Raised on request, to check that Step Functions sees the class name."""


def lambda_handler(event, context):
    if event.get("raise"):
        raise StubFailure(event["raise"])
    return {"seen": event, "stage": os.environ["STUB_STAGE"], "function": context.function_name}
