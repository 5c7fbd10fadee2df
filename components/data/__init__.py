"""The data contract and what reaches it: the canonical dataset directory (`dataset`), the importers of outside
formats (`importers`), the synthetic demo (`demo`), the validate stage (`validation`), DVC's record of a dataset
(`data_version`), and the decoding of untrusted media: images (`images`), audio and video clips (`media`,
`clip_worker`).

It imports only `components.core`.
"""

__all__: list[str] = []  # nothing of its own: import from its modules
