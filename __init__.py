"""ComfyUI entry point of the ToonCrafter node pack (V3 API)."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES
from .nodes.managed_model import install_example_keyframes, register_folder

# At import, before any schema lists the folder's files.
register_folder()


class ToonCrafterExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ToonCrafterExtension:
    # ComfyUI 0.3.64 never calls ComfyExtension.on_load, so start-up work happens here.
    install_example_keyframes()
    return ToonCrafterExtension()
