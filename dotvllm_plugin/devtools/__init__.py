"""Development helpers shared by the demo, the tests and the benchmarks.

Not used by the plugin at serving time. :mod:`.tokenizers` builds real tokenizers locally from
``mistral-common`` data; :mod:`.demo_model` builds the tiny random-weight demo model;
:mod:`.server` runs ``vllm serve`` as a child process; :mod:`.client` is a small OpenAI-API
client (requests + server-sent events).
"""
