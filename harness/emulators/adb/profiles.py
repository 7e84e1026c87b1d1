"""Identity of the emulated phones: the build properties the real devices report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    props: dict[str, str]

    @property
    def product(self) -> str:
        return self.props["ro.product.name"]

    @property
    def model(self) -> str:
        return self.props["ro.product.model"]

    @property
    def device(self) -> str:
        return self.props["ro.product.device"]


def _samsung(model: str, name: str, device: str, soc: str, platform: str, release: str, sdk: str,
             build_id: str, incremental: str) -> dict[str, str]:
    return {
        "ro.product.model": model,
        "ro.product.brand": "samsung",
        "ro.product.manufacturer": "samsung",
        "ro.product.name": name,
        "ro.product.device": device,
        "ro.product.cpu.abi": "arm64-v8a",
        "ro.soc.manufacturer": "QTI",
        "ro.soc.model": soc,
        "ro.board.platform": platform,
        "ro.hardware": "qcom",
        "ro.build.version.release": release,
        "ro.build.version.sdk": sdk,
        "ro.build.id": build_id,
        "ro.build.version.incremental": incremental,
        "ro.build.type": "user",
        "ro.build.fingerprint": f"samsung/{name}/{device}:{release}/{build_id}/{incremental}:user/release-keys",
        "ro.hil.emulated": "1",  # the harness labels every result from this device emulated
    }


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("galaxy-s24", _samsung("SM-S921U", "e1qsqw", "e1q", "SM8650", "pineapple", "14", "34",
                                       "UP1A.231005.007", "S921USQU2AXB5")),
        Profile("galaxy-s25", _samsung("SM-S931U", "pa1qsqw", "pa1q", "SM8750", "sun", "15", "35",
                                       "AP3A.240905.015.A2", "S931USQU1AYA6")),
    )
}
