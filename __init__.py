"""ComfyUI entry point of the ToonCrafter node pack (V3 API)."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES
from .nodes.model import register_folder

register_folder()


class ToonCrafterExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ToonCrafterExtension:
    return ToonCrafterExtension()
