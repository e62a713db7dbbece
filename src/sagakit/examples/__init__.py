"""Example sagas that ship with sagakit (the order-fulfillment demo)."""
