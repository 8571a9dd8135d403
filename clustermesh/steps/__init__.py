"""The KKP guide's steps, one module per step named after its number (``step1_…`` to ``step8_…``)."""
