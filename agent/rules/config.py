"""Rule profiles in config. (Scaffold: the rules engine fills this in.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: Built-in preset names (the rules engine defines their rule sets).
PRESET_NAMES = ("2-8C", "15-25C", "crt", "frozen", "ultra-low", "dry-ice", "ln2")


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, dict] = Field(default_factory=dict, description="named rule profiles")

    def profile_names(self) -> list[str]:
        return sorted(set(PRESET_NAMES) | set(self.profiles))

    def has_profile(self, name: str) -> bool:
        return name in PRESET_NAMES or name in self.profiles
