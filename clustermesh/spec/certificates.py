"""When the nightly warns and fails about certificates that are about to expire.

Both thresholds count whole days left (``days_left``: the days until ``notAfter``, rounded down), per
certificate the mesh depends on (each cluster's CA and its clustermesh-apiserver certificates): fewer
than ``warn_days`` left is a WARN, fewer than ``fail_days`` left (or expired) is a FAIL.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from clustermesh.spec.base import SpecModel, custom_error

__all__ = ["CertificateSettings"]

# ten years: a threshold beyond any certificate certgen issues (three years) is a typo, not a policy
_MAX_DAYS = 3650


class CertificateSettings(SpecModel):
    """Days-to-expiry thresholds of the nightly's certificate check: warn first, fail later."""

    warn_days: Annotated[
        int,
        Field(
            title="Warn below (days)",
            description="WARN when a certificate has fewer than this many whole days left (e.g. 30).",
            ge=2,
            le=_MAX_DAYS,
        ),
    ] = 30
    fail_days: Annotated[
        int,
        Field(
            title="Fail below (days)",
            description="FAIL when a certificate has fewer than this many whole days left (e.g. 7); "
            "must be smaller than warn_days.",
            ge=1,
            le=_MAX_DAYS,
        ),
    ] = 7

    @model_validator(mode="after")
    def _fail_before_warn(self) -> Self:
        if self.fail_days < self.warn_days:
            return self
        # Blame the field the user set (a default is not what they got wrong); both set: fail_days.
        field = "warn_days" if self.model_fields_set == {"warn_days"} else "fail_days"
        value = self.warn_days if field == "warn_days" else self.fail_days
        fix = (
            f"raise warn_days above {self.fail_days} (e.g. {self.fail_days + 23})"
            if field == "warn_days"
            else f"lower fail_days below {self.warn_days} (e.g. {max(1, self.warn_days // 4)})"
        )
        raise ValidationError.from_exception_data(
            "CertificateSettings",
            [
                InitErrorDetails(
                    type=custom_error(
                        "certificate_thresholds",
                        f"fail_days ({self.fail_days}) must be smaller than warn_days ({self.warn_days}): "
                        "a certificate warns before it fails",
                        fix,
                    ),
                    loc=(field,),
                    input=value,
                )
            ],
        )
