"""Translations between OpenAI's chat shapes and other providers' wire formats.

Pure functions and small stateful stream translators, with no HTTP in them: the adapters
(``proxy.adapters``) call them around their requests, and other inbound APIs can reuse
them. Each provider has one module: ``request()`` turns an OpenAI chat body into the
provider's body; ``response()`` turns the provider's answer into a ``chat.completion``;
a ``Chunks`` class turns the provider's stream events into ``chat.completion.chunk``
dicts. ``params`` says what happens to each OpenAI parameter a translation cannot carry.
"""
