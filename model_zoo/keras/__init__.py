"""Keras reference models (built by code, saved under ``model_zoo.common.cache_dir("keras")``)."""

from model_zoo.keras.models import APPLICATIONS, BUILDERS, build, save_model

__all__ = ["APPLICATIONS", "BUILDERS", "build", "save_model"]
