"""The Anthropic Messages API, inbound: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

The same request path as chat completions, with the stages that differ in their own
modules, in order: ``parse`` (the Messages request), ``proxy.auth`` (``x-api-key`` or a
Bearer key), ``proxy.admit`` and ``proxy.route`` (unchanged), ``call`` (an Anthropic
deployment natively, any other through its adapter and ``proxy.translate.messages``),
``relay`` (Anthropic's JSON and typed SSE events) and ``proxy.meter`` (unchanged: one
ledger row, ``api`` = ``messages``). ``errors`` renders every failure in Anthropic's shape.
"""
