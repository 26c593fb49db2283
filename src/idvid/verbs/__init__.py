"""The verbs of ``python -m idvid <verb>``, one module each; ``idvid.cli`` dispatches to them.

Library code (models, data, metrics, formats) lives in the other packages and never imports a verb.
"""
