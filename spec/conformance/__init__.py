"""The conformance kit: run the property suite and the golden vectors against any implementation.

``attnspec check [TARGET]`` (``cli``) drives ``runner`` and prints a ``report``;
``ATTNSPEC_IMPL=module:name pytest --pyargs attnspec.spec.conformance`` runs the
same properties as pytest tests (``test_conformance``). See docs/conformance.md.
"""
