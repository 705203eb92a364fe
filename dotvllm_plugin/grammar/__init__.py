"""The grammar IR and its front ends.

Every constraint kind is a front end that produces one grammar IR (rules over regex terminals);
the engine below it (:mod:`dotvllm_plugin.regex`, :mod:`dotvllm_plugin.index`) knows nothing of
JSON or Lark. Front ends: :mod:`.json_schema` (JSON Schema → regex).
"""
