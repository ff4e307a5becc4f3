"""A few Django tests, run by `manage.py test --parallel 2` in the suite to prove the
test runner (creating, cloning and dropping test databases) works with the pool."""

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import Item


class ItemTests(TestCase):
    def test_create_and_count(self):
        Item.objects.create(name="a", stock=1)
        self.assertEqual(Item.objects.count(), 1)

    def test_atomic_rollback(self):
        with self.assertRaises(RuntimeError), transaction.atomic():
            Item.objects.create(name="b", stock=1)
            raise RuntimeError
        self.assertEqual(Item.objects.count(), 0)


class ItemTransactionTests(TransactionTestCase):
    def test_commit_is_visible_after_the_connection_goes_back(self):
        Item.objects.create(name="c", stock=2)
        connection.close()
        self.assertEqual(Item.objects.get().stock, 2)

    def test_on_commit_runs(self):
        ran = []
        with transaction.atomic():
            Item.objects.create(name="d", stock=3)
            transaction.on_commit(lambda: ran.append(True))
        self.assertEqual(ran, [True])
