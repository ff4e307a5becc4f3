from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    stock = models.IntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name
