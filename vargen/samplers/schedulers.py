"""The diffusion schedulers samplers step through; defined beside the model that trains with them
(:mod:`vargen.models.schedulers`), re-exported here."""
from ..models.schedulers import IDDPMScheduler, SchedulerOutput, cosine_betas, space_timesteps

__all__ = ["IDDPMScheduler", "SchedulerOutput", "cosine_betas", "space_timesteps"]
