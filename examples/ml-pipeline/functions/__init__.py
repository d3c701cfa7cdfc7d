"""The example's Lambda functions; each module's ``handler`` is one function.

They share one container image (functions/Dockerfile, built from the example's
folder), whose task root mirrors that folder: ``functions/`` and ``mlcommon/``.
"""
