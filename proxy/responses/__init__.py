"""OpenAI's Responses API (``/v1/responses``), on the same request path as chat.

``request`` parses it (stage 1), ``store`` keeps and reads stored responses (and expands a
``previous_response_id`` into the conversation), ``relay`` answers it as a ``response``
object or as the typed SSE events and meters it (stages 6 and 7), and ``views`` runs the
stages. Authentication, admission, routing, retries and the ledger are chat's own
(``proxy.views._run``). A model whose provider serves the Responses API (its
``serves_responses`` flag) gets the request passed through; every other model is
translated to chat completions by ``proxy.translate.responses``.
"""
